# Effective class-margin loss (Cho and Kraehenbuehl, ECCV 2022) in the RoI head: a sigmoid
# classifier per column (background included) with margins and weights from the training image
# counts; with the cosine classifier (NormedLinear, temperature 20) of the published configs.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            cls_predictor_cfg=dict(type='NormedLinear', tempearture=20),
            loss_cls=dict(
                _delete_=True,
                type='EffectiveClassMarginLoss',
                use_sigmoid=True,
                bg_fg_ratio=6.3313,
                loss_weight=1.0))))
custom_hooks = [dict(type='ClassStatsHook')]
