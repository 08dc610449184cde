# The Aquarium baseline trained 3x as long (9000 iterations, same warm-up and cosine decay): one
# model with the training budget of a 3-member ensemble, to compare the ensemble with.
_base_ = './faster-rcnn_r18tiny_fpn_3k_aquarium.py'

max_iters = 9000
train_cfg = dict(max_iters=max_iters, val_interval=1500)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
