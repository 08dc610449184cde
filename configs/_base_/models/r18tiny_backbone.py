# The backbone shared by the tiny demo detectors, trained from scratch (no pretrained weights):
# ResNet-18 layout with 16 base channels; stages 2-4 (strides 8/16/32, 32/64/128 channels).
tiny_backbone = dict(
    type='ResNet',
    depth=18,
    base_channels=16,
    num_stages=4,
    out_indices=(1, 2, 3),
    frozen_stages=-1,
    norm_cfg=dict(type='BN', requires_grad=True),
    norm_eval=False,
    style='pytorch',
    init_cfg=None)
tiny_backbone_channels = [32, 64, 128]
