# Repeat-factor sampling on Aquarium at the threshold `mmimb-analyze` recommends for its training
# set (t = 0.536 = f(fish): every other class repeated, jellyfish, in 7% of the images, 2.74x).
_base_ = './faster-rcnn_r18tiny_fpn_3k_aquarium.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='RepeatFactorSampler', oversample_thr=0.536))
