# Class-aware sampling with a power knob on Aquarium: image weight max_c f_c ** -q, q = 0.5.
_base_ = './faster-rcnn_r18tiny_fpn_3k_aquarium.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='ClassAwarePowerSampler', power=0.5))
