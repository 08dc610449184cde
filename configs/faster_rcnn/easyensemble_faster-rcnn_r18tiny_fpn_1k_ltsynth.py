# Balanced ensemble (EasyEnsemble; Liu, Wu & Zhou, IEEE TSMC-B 2009): K members, each trained on
# its own fixed undersampled subset (the undersampling config, redraw=False, seeds 1000*s + k):
# every image with a class that is not reduced is in every subset. Their predictions on the
# evaluation set are fused by weighted boxes fusion. K members cost K times the budget.
#   python tools/train_ensemble.py configs/faster_rcnn/easyensemble_faster-rcnn_r18tiny_fpn_1k_ltsynth.py
_base_ = './undersample_faster-rcnn_r18tiny_fpn_1k_ltsynth.py'

train_dataloader = dict(sampler=dict(redraw=False))
ensemble = dict(members=3, fusion=dict(type='BoxFusion', method='wbf', iou_thr=0.55))
