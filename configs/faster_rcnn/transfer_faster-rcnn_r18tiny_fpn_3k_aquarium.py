# Transfer learning: the Aquarium baseline, started from a detector pretrained on the embedded
# synthetic set instead of random weights, with the stem and the first ResNet stage frozen.
# Nothing is downloaded: the checkpoint is the project's own synthetic baseline,
#   work_dirs/quality/ltsynth_frcnn/baseline/seed0/iter_1000.pth
# (faster-rcnn_r18tiny_fpn_1k_ltsynth.py, seed 0, after its 1000 iterations; the quality
# benchmark writes it there). Two commands:
#   python tools/train.py configs/faster_rcnn/faster-rcnn_r18tiny_fpn_1k_ltsynth.py \
#       --work-dir work_dirs/quality/ltsynth_frcnn/baseline/seed0
#   python tools/train.py configs/faster_rcnn/transfer_faster-rcnn_r18tiny_fpn_3k_aquarium.py
# Another checkpoint: --cfg-options load_from=PATH.
#
# What is loaded: every tensor whose name and shape match the model's (backbone, FPN, RPN head,
# the RoI head's shared fcs). The classifier fc_cls (12 + 1 -> 7 + 1 outputs) and the
# class-specific box regressor fc_reg (12 x 4 -> 7 x 4) differ in shape: mmengine loads the
# checkpoint non-strictly, warns about them and keeps their fresh initialisation
# (SetupCheckHook refuses such checkpoints only with strict_checkpoint=True, i.e. for
# --resume and tools/test.py). Training length and learning rate are the baseline's, so the
# run compares with training from scratch at the same budget.
#
# Your own COCO-pretrained weights (a local file): inherit a model config of the same
# architecture as the checkpoint (e.g. mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py for
# mmdet's Faster R-CNN R50-FPN), set roi_head.bbox_head.num_classes to your classes and
# load_from to the file; fc_cls (81 -> num_classes + 1) and fc_reg (320 -> 4 x num_classes)
# are re-initialised, the rest is loaded. With well-trained weights, freeze more
# (backbone frozen_stages=1 is mmdet's default for ImageNet backbones; norm_eval=True keeps
# their BN statistics under small batches) and, if the loss jumps early, lower the learning
# rate: optim_wrapper = dict(optimizer=dict(lr=...)). Only backbone weights (ImageNet):
# model.backbone.init_cfg = dict(type='Pretrained', checkpoint=PATH) instead of load_from.
_base_ = './faster-rcnn_r18tiny_fpn_3k_aquarium.py'

# The one place that names the pretrained checkpoint.
load_from = 'work_dirs/quality/ltsynth_frcnn/baseline/seed0/iter_1000.pth'
# Stem and layer1 (stride 4, 16 channels) keep their pretrained weights and BN statistics
# (mmdet's ResNet sets requires_grad=False and eval mode on them); layer2-4 fine-tune.
model = dict(backbone=dict(frozen_stages=1))
