# Mask-based rare-class copy-paste together with repeat-factor sampling (as Ghiasi et al. use
# Simple Copy-Paste with RFS on LVIS): the pipeline and masked training set of maskpaste_*, the
# sampler of rfs_* (t 0.822, the threshold mmimb-analyze recommends for this training set).
_base_ = './maskpaste_faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='RepeatFactorSampler', oversample_thr=0.822))
