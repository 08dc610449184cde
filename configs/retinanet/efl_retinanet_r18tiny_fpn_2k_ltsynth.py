# Equalized focal loss (Li et al., CVPR 2022): a focusing factor per class from accumulated
# gradient statistics. use_sigmoid=True is read by the head to size its classifier; the number of
# classes comes from the classifier's outputs (no num_classes here).
_base_ = './retinanet_r18tiny_fpn_2k_ltsynth.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True,
            type='EqualizedFocalLoss',
            use_sigmoid=True,
            gamma_b=2.0,
            scale_factor=8.0,
            alpha=0.25,
            loss_weight=1.0)))
