# Cosine (normalised) classifier in the RoI head on Aquarium: logits = 20 * cos(feature, class
# weight), no bias, the background one more prototype (TFA, Wang et al., ICML 2020); softmax
# cross-entropy; everything else as the Aquarium baseline.
_base_ = './faster-rcnn_r18tiny_fpn_3k_aquarium.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(type='CosineShared2FCBBoxHead', scale=20.0, learnable_scale=False)))
