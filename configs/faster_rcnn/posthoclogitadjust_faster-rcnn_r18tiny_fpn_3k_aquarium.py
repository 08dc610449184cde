# Post-hoc logit adjustment (Menon et al., ICLR 2021): the baseline, scored at inference with
# softmax(logits - tau * log(prior)), background not adjusted. No retraining: evaluate the
# baseline's checkpoint (the counts come from the training set through ClassStatsHook),
#   python tools/test.py configs/faster_rcnn/posthoclogitadjust_faster-rcnn_r18tiny_fpn_3k_aquarium.py \
#       work_dirs/faster-rcnn_r18tiny_fpn_3k_aquarium/iter_3000.pth
# Training with this config trains the baseline: in training the loss is plain cross-entropy.
_base_ = './faster-rcnn_r18tiny_fpn_3k_aquarium.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type='PostHocLogitAdjustedLoss',
                tau=1.0,
                loss_weight=1.0))))
custom_hooks = [dict(type='ClassStatsHook')]
