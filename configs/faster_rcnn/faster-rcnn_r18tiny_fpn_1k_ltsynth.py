# Baseline: tiny Faster R-CNN (softmax cross-entropy in the RoI head) on the synthetic long-tail set.
_base_ = [
    '../_base_/models/faster-rcnn_r18tiny_fpn.py',
    '../_base_/datasets/lt_synth_detection.py',
    '../_base_/schedules/adamw_1k.py',
    '../_base_/default_runtime.py',
]
