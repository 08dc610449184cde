# Baseline: tiny RetinaNet (sigmoid focal loss, mmdet's FocalLoss) on the synthetic long-tail set.
_base_ = [
    '../_base_/models/retinanet_r18tiny_fpn.py',
    '../_base_/datasets/lt_synth_detection.py',
    '../_base_/schedules/adamw_2k.py',
    '../_base_/default_runtime.py',
]
