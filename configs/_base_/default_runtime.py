# mmdet's runtime defaults, with mmimb imported (registration + checkpoint loading under torch 2.14).
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['mmimb'], allow_failed_imports=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=1),
    # Warns once about silent misconfigurations (mmimb.hooks.setup_check), with any tool.
    setup_check=dict(type='SetupCheckHook'))
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))
randomness = dict(seed=0)
