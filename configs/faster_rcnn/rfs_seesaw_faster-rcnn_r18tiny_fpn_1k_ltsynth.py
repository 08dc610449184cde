# The best loss with the best sampler of the synthetic table: mmdet's SeesawLoss in the RoI head
# and repeat-factor sampling (t 0.822, the threshold mmimb-analyze recommends for this training
# set). Issue 12's "best combination" row.
_base_ = './seesaw_faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='RepeatFactorSampler', oversample_thr=0.822))
