# A tiny Faster R-CNN trained from scratch (no pretrained weights): the same ResNet-18 layout as
# the tiny RetinaNet, a 64-channel FPN over strides 8/16/32, and a small two-fc RoI head.
_base_ = ['mmdet::_base_/models/faster-rcnn_r50_fpn.py', './r18tiny_backbone.py']

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone={{_base_.tiny_backbone}},
    neck=dict(in_channels={{_base_.tiny_backbone_channels}}, out_channels=64, num_outs=3),
    rpn_head=dict(
        in_channels=64,
        feat_channels=64,
        anchor_generator=dict(scales=[2, 4], strides=[8, 16, 32])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
            out_channels=64,
            featmap_strides=[8, 16, 32]),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=12)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(score_thr=0.05, max_per_img=100)))
