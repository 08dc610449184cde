# Rare-class copy-paste on the tiny RetinaNet baseline: only the training pipeline differs.
# Crops of the classes in at most 15% of training images (the rare and common groups of the
# metric, 9 of 12 classes) are pasted into half of the images, 1-2 per image, class c with
# probability proportional to (1 / f_c) ** 0.5. The bank reads the baseline's training set.
_base_ = './retinanet_r18tiny_fpn_2k_ltsynth.py'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RareClassCopyPaste',
         dataset={{_base_.train_dataloader.dataset}},
         freq_thr=0.15,
         power=0.5,
         num_objects=(1, 2),
         prob=0.5,
         scale_range=(0.75, 1.33),
         blend='rect',
         occlusion_thr=0.7,
         max_crops_per_class=50,
         seed=0),
    dict(type='Resize', scale={{_base_.image_scale}}, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
