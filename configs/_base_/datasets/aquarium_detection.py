# Aquarium (Roboflow "Aquarium Combined"): real underwater photos, 7 classes, long-tailed
# (train boxes fish 1961 ... starfish 78, 25:1; images 240 ... 32, 7.5:1). Read in place from
# ../shared/data/aquarium (never copied into the repository); train on train, evaluate on val.
dataset_type = 'CocoDataset'
data_root = '{{ fileDirname }}/../../../../shared/data/aquarium/'
classes = ('fish', 'jellyfish', 'penguin', 'puffin', 'shark', 'starfish', 'stingray')
metainfo = dict(classes=classes)
image_scale = (512, 512)  # longer side 512 px (the photos are 768-1024 px)

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
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img=''),
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
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img=''),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# Groups by training boxes at the thirds of the 7 classes' counts (quantile, not LVIS's absolute
# 10/100 images, which would call every class frequent): rare <= 175 boxes (starfish, stingray,
# puffin), common <= 330 (shark, penguin), frequent (jellyfish, fish).
val_evaluator = dict(
    type='LongTailMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    train_ann_file=data_root + 'annotations/instances_train.json',
    count_by='instance',
    group_by='quantile')
test_evaluator = val_evaluator
