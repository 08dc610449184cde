# Softmax focal loss (Lin et al., ICCV 2017) in the RoI head, with its background column.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type='SoftmaxFocalLoss',
                use_sigmoid=False,
                num_classes=12,
                gamma=2.0,
                loss_weight=1.0))))
