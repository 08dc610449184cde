# Decoupled training on Aquarium, stage 2: classifier re-training (cRT; Kang et al., ICLR 2020).
# Starts from the final checkpoint of the Aquarium baseline (or of any Aquarium detector, e.g. one
# trained with rare-class copy-paste), freezes all but the RoI classifier (fc_cls; frozen BN
# layers keep their running statistics) and retrains it with class-balanced sampling (class-aware,
# power 1) for 600 more iterations (stage 1 + stage 2 = 1.2x the baseline's budget, as on the
# synthetic set). Both stages with one command:
#   python tools/train_decoupled.py configs/faster_rcnn/crt_faster-rcnn_r18tiny_fpn_3k_aquarium.py
_base_ = './faster-rcnn_r18tiny_fpn_3k_aquarium.py'

stage1_config = '{{fileDirname}}/faster-rcnn_r18tiny_fpn_3k_aquarium.py'
# Where `tools/train.py` leaves stage 1 by default; tools/train_decoupled.py sets its own.
load_from = 'work_dirs/faster-rcnn_r18tiny_fpn_3k_aquarium/iter_3000.pth'
custom_hooks = [dict(type='FreezeExceptHook', trainable=['roi_head.bbox_head.fc_cls'])]
train_dataloader = dict(
    sampler=dict(_delete_=True, type='ClassAwarePowerSampler', power=1.0))

max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, eta_min=1e-5)]
