# The embedded synthetic long-tailed dataset (mmimb.datasets.synthetic), generated on first use.
# 12 classes = 4 shapes x 3 textures; training instances 1500 -> 15 (head:tail 100:1);
# the validation split has 25 instances of every class.
dataset_type = 'SyntheticLongTailDataset'
data_root = 'data/lt_synth/'
synthetic = dict(num_classes=12, max_instances=1500, imbalance_ratio=100, seed=0)
image_scale = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        synthetic=synthetic,
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        synthetic=synthetic,
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# Frequency groups by training images: rare <= 30 < common <= 150 < frequent. (LVIS uses 10/100
# at a far larger scale; these thresholds split this dataset's 12 classes 4/5/3.)
val_evaluator = dict(
    type='LongTailMetric',
    ann_file=data_root + 'annotations/val.json',
    train_ann_file=data_root + 'annotations/train.json',
    count_by='image',
    rare_max=30,
    common_max=150)
test_evaluator = val_evaluator
