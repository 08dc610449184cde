# The demo schedule at 1000 iterations (used by the tiny Faster R-CNN, whose iterations cost ~3x).
_base_ = './adamw_2k.py'

max_iters = 1000
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
