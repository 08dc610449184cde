# Rare-class copy-paste (soft rectangles) together with repeat-factor sampling: the pipeline of
# rarecopypaste_*, the sampler of rfs_* (t 0.822, the threshold mmimb-analyze recommends for
# this training set). Issue 13's question: does pasting add to the best sampler?
_base_ = './rarecopypaste_faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='RepeatFactorSampler', oversample_thr=0.822))
