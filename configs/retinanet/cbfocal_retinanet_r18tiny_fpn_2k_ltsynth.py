# Class-balanced sigmoid focal loss (Cui et al., CVPR 2019), counts read from the training set.
# The number of classes comes from the training set with the counts (no num_classes here).
_base_ = './retinanet_r18tiny_fpn_2k_ltsynth.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True,
            type='ClassBalancedFocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            class_counts='auto',
            beta=0.999,
            loss_weight=1.0)))
custom_hooks = [dict(type='ClassStatsHook')]
