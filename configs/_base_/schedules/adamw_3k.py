# The demo schedule at 3000 iterations (real photos: Aquarium, about 54 epochs at batch 8),
# validated every 500 iterations (the learning curve; experiment files checkpoint as often).
_base_ = './adamw_2k.py'

max_iters = 3000
train_cfg = dict(max_iters=max_iters, val_interval=500)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
