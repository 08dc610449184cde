# Class-aware sampling with a power knob: image weight max_c f_c ** -q, here q = 0.5
# (q = 0 is uniform over images, q = 1 makes every class equally likely).
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='ClassAwarePowerSampler', power=0.5))
