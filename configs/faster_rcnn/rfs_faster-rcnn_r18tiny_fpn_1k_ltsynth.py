# Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019) with stochastic rounding, as a sampler.
# t = 0.1: a class in fewer than 10% of the training images is repeated (t / f_c) ** 0.5 times.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='RepeatFactorSampler', oversample_thr=0.1))
