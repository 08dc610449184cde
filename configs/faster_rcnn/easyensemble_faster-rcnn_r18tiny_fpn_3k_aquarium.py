# Balanced ensemble (EasyEnsemble; Liu, Wu & Zhou, IEEE TSMC-B 2009) on Aquarium: 3 members, each
# trained for the baseline's 3000 iterations on its own fixed undersampled subset (the Aquarium
# undersampling config, redraw=False, seeds 1000*s + k); their predictions on val are fused by
# weighted boxes fusion. 3 members cost 3x the baseline's budget: compare with the 9k baseline.
#   python tools/train_ensemble.py configs/faster_rcnn/easyensemble_faster-rcnn_r18tiny_fpn_3k_aquarium.py
_base_ = './undersample_faster-rcnn_r18tiny_fpn_3k_aquarium.py'

train_dataloader = dict(sampler=dict(redraw=False))
ensemble = dict(members=3, fusion=dict(type='BoxFusion', method='wbf', iou_thr=0.55))
