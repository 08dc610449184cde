# BCCD blood cells (Pascal VOC layout): real 640x480 microscope images, 3 classes, train boxes
# RBC 2382, WBC 214, Platelets 209 (11:1 by boxes, only 1.7:1 by images). Read in place from
# ../shared/data/bccd (never copied into the repository); train on train, evaluate on test.
dataset_type = 'VOCDataset'
data_root = '{{ fileDirname }}/../../../../shared/data/bccd/'
classes = ('RBC', 'WBC', 'Platelets')
metainfo = dict(classes=classes)
image_scale = (320, 320)  # longer side 320 px (cells are 30-200 px in the 640 px originals)

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
    # 'instances': the metric converts the ground truth from them (the dataset has no COCO json)
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                    'instances')),
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
        ann_file='BCCD/ImageSets/Main/train.txt',
        data_prefix=dict(sub_data_root='BCCD/'),
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
        ann_file='BCCD/ImageSets/Main/test.txt',
        data_prefix=dict(sub_data_root='BCCD/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# The ground truth is converted from the VOC dataset (ann_file=None); groups come from the
# training set's box counts (ClassStatsHook), one class per group at the thirds of 3 classes:
# rare Platelets (209), common WBC (214), frequent RBC (2382).
val_evaluator = dict(
    type='LongTailMetric',
    class_counts='auto',
    count_by='instance',
    group_by='quantile')
test_evaluator = val_evaluator
custom_hooks = [dict(type='ClassStatsHook')]
