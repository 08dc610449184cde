# Repeat-factor sampling on the synthetic baseline trained 3x as long (3000 iterations): does
# re-sampling still add once the baseline has had time to learn its rare classes?
_base_ = './faster-rcnn_r18tiny_fpn_3k_ltsynth.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='RepeatFactorSampler', oversample_thr=0.822))
