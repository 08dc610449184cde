# Mask-based rare-class copy-paste (Ghiasi et al., CVPR 2021, Simple Copy-Paste) on the tiny
# Faster R-CNN: the copy-paste experiment with blend='mask', so a pasted object brings no
# background rectangle, and occlusion of the objects below it is computed on their masks.
# The training set is the baseline's with instance masks in its json (images and boxes are
# byte-identical), generated on first use into its own folder, or with
#   python tools/make_synthetic_data.py --out data/lt_synth_masks --with-masks
# Validation and the metric read the baseline's data unchanged.
_base_ = './rarecopypaste_faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

mask_data_root = 'data/lt_synth_masks/'
# The baseline's `synthetic` with masks (a test checks that the two agree).
mask_synthetic = dict(num_classes=12, max_instances=1500, imbalance_ratio=100, seed=0,
                      with_masks=True)
train_dataset = dict(
    type='SyntheticLongTailDataset',
    data_root=mask_data_root,
    split='train',
    synthetic=mask_synthetic,
    filter_cfg=dict(filter_empty_gt=False))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RareClassCopyPaste',
         dataset=train_dataset,
         freq_thr=0.15,
         power=0.5,
         num_objects=(1, 2),
         prob=0.5,
         scale_range=(0.75, 1.33),
         blend='mask',
         keep_masks=False,  # Faster R-CNN trains on boxes: Resize and flip skip the masks
         occlusion_thr=0.7,
         max_crops_per_class=50,
         seed=0),
    dict(type='Resize', scale={{_base_.image_scale}}, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(train_dataset, pipeline=train_pipeline))
