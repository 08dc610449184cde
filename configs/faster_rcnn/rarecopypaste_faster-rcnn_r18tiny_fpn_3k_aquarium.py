# Rare-class copy-paste on the Aquarium baseline (box-only annotations): only the training
# pipeline differs. Crops of the rare and common groups by boxes (puffin, starfish, stingray;
# penguin, shark) are pasted into half of the images, 1-2 per image, class c with probability
# proportional to (1 / f_c) ** 0.5, at the photos' own resolution (before Resize). blend='soft'
# feathers the crop rectangle; the quality matrix's matte row estimates each crop's foreground
# with GrabCut instead (box-only data has no masks).
_base_ = './faster-rcnn_r18tiny_fpn_3k_aquarium.py'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RareClassCopyPaste',
         dataset={{_base_.train_dataloader.dataset}},
         classes=['puffin', 'starfish', 'stingray', 'penguin', 'shark'],
         freq_thr=None,
         power=0.5,
         num_objects=(1, 2),
         prob=0.5,
         scale_range=(0.75, 1.33),
         blend='soft',
         occlusion_thr=0.7,
         max_crops_per_class=50,
         seed=0),
    dict(type='Resize', scale={{_base_.image_scale}}, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
