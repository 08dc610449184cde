# Baseline: tiny Faster R-CNN from scratch on Aquarium (real photos, 7 classes, 25:1 by boxes).
# Differs from the synthetic baseline in data, image scale and schedule only.
_base_ = [
    '../_base_/models/faster-rcnn_r18tiny_fpn.py',
    '../_base_/datasets/aquarium_detection.py',
    '../_base_/schedules/adamw_3k.py',
    '../_base_/default_runtime.py',
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=7)))
# A checkpoint every 500 iterations: an interrupted run resumes with little loss.
default_hooks = dict(checkpoint=dict(interval=500))
