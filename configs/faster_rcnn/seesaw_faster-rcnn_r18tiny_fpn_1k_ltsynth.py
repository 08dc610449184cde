# Seesaw loss (Wang et al., CVPR 2021): mmdet's own SeesawLoss computation with its published
# settings (p=0.8, q=2.0) and cosine classifier (NormedLinear, temperature 20), through mmimb's
# HeadSizedSeesawLoss, which takes num_classes from the head (mmdet's needs it written twice).
# Seesaw counts the classes itself during training, so it needs no ClassStatsHook.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            cls_predictor_cfg=dict(type='NormedLinear', tempearture=20),
            loss_cls=dict(
                _delete_=True,
                type='HeadSizedSeesawLoss',
                p=0.8,
                q=2.0,
                loss_weight=1.0))))
