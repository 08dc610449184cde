"""mmimb.models: model parts registered in mmdet's ``MODELS``.

- :mod:`mmimb.models.cosine_head`: :class:`CosineLinear`, a normalised (cosine) classifier
  with a temperature, and :class:`CosineShared2FCBBoxHead`, the RoI head that uses it.

The prior-based bias initialisation of sigmoid heads is a hook:
:class:`mmimb.hooks.PriorBiasHook`.
"""

from mmimb.models.cosine_head import CosineLinear, CosineShared2FCBBoxHead, check_scale

__all__ = ["CosineLinear", "CosineShared2FCBBoxHead", "check_scale"]
