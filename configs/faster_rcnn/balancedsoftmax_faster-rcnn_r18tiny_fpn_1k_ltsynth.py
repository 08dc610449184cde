# Balanced softmax / logit-adjusted loss (Ren et al., NeurIPS 2020; Menon et al., ICLR 2021) in
# the RoI head: softmax cross-entropy of logits + tau * log(prior) from the training instance
# counts, background not adjusted. Counts come from the training set (ClassStatsHook), the
# number of classes from the head.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type='BalancedSoftmaxLoss',
                tau=1.0,
                loss_weight=1.0))))
custom_hooks = [dict(type='ClassStatsHook')]
