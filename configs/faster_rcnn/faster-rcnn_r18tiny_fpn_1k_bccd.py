# Baseline: tiny Faster R-CNN from scratch on BCCD (real blood-cell images, 3 classes, 11:1 by
# boxes, 1.7:1 by images). Differs from the synthetic baseline in data and image scale only.
_base_ = [
    '../_base_/models/faster-rcnn_r18tiny_fpn.py',
    '../_base_/datasets/bccd_detection.py',
    '../_base_/schedules/adamw_1k.py',
    '../_base_/default_runtime.py',
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=3)))
