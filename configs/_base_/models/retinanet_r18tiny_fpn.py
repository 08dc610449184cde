# A tiny RetinaNet trained from scratch (no pretrained weights): ResNet-18 layout with 16 base
# channels, a 64-channel FPN over strides 8/16/32, and a two-conv head. Built on mmdet's base.
_base_ = ['mmdet::_base_/models/retinanet_r50_fpn.py', './r18tiny_backbone.py']

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone={{_base_.tiny_backbone}},
    neck=dict(
        in_channels={{_base_.tiny_backbone_channels}},
        out_channels=64,
        start_level=0,
        add_extra_convs=False,
        num_outs=3),
    bbox_head=dict(
        num_classes=12,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        anchor_generator=dict(octave_base_scale=2, strides=[8, 16, 32])),
    test_cfg=dict(nms_pre=1000, score_thr=0.05, max_per_img=100))
