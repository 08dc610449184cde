# Rare-class copy-paste together with the Seesaw loss on Aquarium: the pipeline of
# rarecopypaste_*, the RoI head of seesaw_* (HeadSizedSeesawLoss, p 0.8, q 2.0, cosine
# classifier at temperature 20). The quality matrix runs it with blend='rect', the paste that
# helped on Aquarium. Issue 12's "best combination" on real photos, where no sampler helped.
_base_ = './rarecopypaste_faster-rcnn_r18tiny_fpn_3k_aquarium.py'

model = dict(
    roi_head=dict(
        bbox_head=dict(
            cls_predictor_cfg=dict(type='NormedLinear', tempearture=20),
            loss_cls=dict(
                _delete_=True, type='HeadSizedSeesawLoss', p=0.8, q=2.0, loss_weight=1.0))))
