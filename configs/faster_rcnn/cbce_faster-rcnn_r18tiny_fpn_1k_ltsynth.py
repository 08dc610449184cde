# Class-balanced softmax cross-entropy in the RoI head, counts read from the training set.
# The RoI head sizes the loss (no num_classes here).
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type='ClassBalancedCrossEntropyLoss',
                use_sigmoid=False,
                    class_counts='auto',
                beta=0.999,
                loss_weight=1.0))))
custom_hooks = [dict(type='ClassStatsHook')]
