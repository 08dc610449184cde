# Undersampling of the majority classes, redrawn every epoch: each reduced class keeps at most
# 10x the rarest class's images (imbalanced-learn's float sampling_strategy); an image with a
# class that is not reduced is never dropped.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_dataloader = dict(
    sampler=dict(_delete_=True, type='UndersampleSampler', sampling_strategy=0.1))
