# EQLv2 (Tan et al., CVPR 2021) in the RoI head: sigmoid classifier over the classes plus a
# background column, positives and negatives re-weighted by accumulated gradient statistics.
# The head sizes the loss (no num_classes here) and predicts with the loss's sigmoid scores.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type='EqualizationLossV2',
                gamma=12.0,
                mu=0.8,
                alpha=4.0,
                loss_weight=1.0))))
