# Class-prior bias initialisation of RetinaNet's sigmoid classifier: b_c = -log((1 - pi_c) / pi_c)
# with pi_c proportional to the training instances of class c, mean 0.01 (RetinaNet's constant
# prior), set before the first iteration from the training set (mmimb.hooks.PriorBiasHook).
_base_ = './retinanet_r18tiny_fpn_2k_ltsynth.py'

custom_hooks = [dict(type='PriorBiasHook', mean_prior=0.01)]
