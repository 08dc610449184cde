# Rarity-conditioned augmentation on the tiny Faster R-CNN baseline: only the training pipeline
# differs. Images whose rarest class is rare (<= 30 training images, the metric's groups) are
# always zoomed in and colour-jittered, those whose rarest class is common (<= 150) half
# of the time, the others never. The statistics come from the baseline's training set.
# Zoom-in only and no translation: RandomAffine fills uncovered borders with grey, which would
# mark rare-class images.
_base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RarityConditionedApply',
         dataset={{_base_.train_dataloader.dataset}},
         mapping='group',
         group_probs=(1.0, 0.5, 0.0),
         rare_max=30,
         common_max=150,
         seed=0,
         transforms=[
             dict(type='RandomAffine', max_rotate_degree=0, max_shear_degree=0,
                  scaling_ratio_range=(1.0, 1.5), max_translate_ratio=0.0),
             dict(type='YOLOXHSVRandomAug'),
         ]),
    dict(type='Resize', scale={{_base_.image_scale}}, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
