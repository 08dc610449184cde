# Repeat-factor sampling as a dataset wrapper (composes with MultiImageMixDataset/ConcatDataset).
# Its table of repeated images is redrawn every epoch by DatasetEpochHook.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='RepeatFactorDataset',
        oversample_thr=0.1,
        dataset={{_base_.train_dataloader.dataset}}))
custom_hooks = [dict(type='DatasetEpochHook')]
