"""A normalised (cosine) classifier with a temperature for RoI heads.

The logit of class ``k`` is the cosine between the RoI feature and the class's weight vector,
times a scale ``s`` (the inverse of a softmax temperature ``T = 1 / s``)::

    logits = s * normalize(x) @ normalize(W).T

Normalising removes the weight norm, which grows with a class's number of training samples
and biases a linear classifier towards frequent classes (Kang et al., "Decoupling
Representation and Classifier for Long-Tailed Recognition", ICLR 2020; Gidaris & Komodakis,
"Dynamic Few-Shot Visual Learning without Forgetting", CVPR 2018). For detection it is TFA's
classifier (Wang et al., "Frustratingly Simple Few-Shot Object Detection", ICML 2020, scale 20).

Background column: with a softmax loss the RoI head has ``C + 1`` outputs (mmdet's
``get_cls_channels`` protocol decides, so a sigmoid loss gets ``C``). Every output, the
background included, is one normalised prototype scored the same way, as in TFA. A linear
background logit instead would make the foreground/background decision depend on the
feature norm, the very magnitude the cosine classifier removes. There is no bias term: a
learned per-class bias would bring back the class prior that the normalisation takes out.

Shape shorthand used below:
    N: number of RoIs
    D: number of input features
    K: number of classifier outputs (``C + 1`` with a background column, else ``C``)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812  (the universal alias)
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.registry import MODELS
from torch import Tensor, nn

from mmimb.losses.base import _check_real

#: TFA's scale (temperature 1/20), also the default of mmdet's ``NormedLinear``.
DEFAULT_SCALE = 20.0


def check_scale(scale: float) -> float:
    """Return ``scale`` as a float if it is a finite real number > 0.

    Raises:
        TypeError: if it is not a real number (``bool`` included).
        ValueError: if it is not finite or <= 0.
    """
    value = _check_real(scale, "scale")
    if value <= 0:
        raise ValueError(f"scale must be > 0 (the logits are scale * cosine, the inverse of a "
                         f"softmax temperature; TFA uses {DEFAULT_SCALE}), got {scale!r}")
    return value


@MODELS.register_module()
class CosineLinear(nn.Linear):
    """``Tensor[N, D] -> Tensor[N, K]``: ``scale * normalize(x) @ normalize(W).T``, no bias.

    Usable as the ``cls_predictor_cfg`` of any mmdet ``BBoxHead``, which passes
    ``in_features`` and ``out_features``. A zero feature vector (all ReLU outputs zero) scores
    0 for every class. mmdet's ``NormedLinear`` computes the same with ``power=1`` and no bias,
    but takes neither a learnable nor a checked temperature.

    Args:
        in_features: ``D``.
        out_features: ``K``.
        scale: ``s > 0``, the logits lie in ``[-s, s]``.
        learnable_scale: learn ``s`` (stored as the parameter ``log_scale`` so that it stays
            positive; the optimizer's weight decay applies to it unless ``paramwise_cfg``
            exempts it), else keep it fixed.

    Raises:
        TypeError, ValueError: on a bad ``scale`` (see :func:`check_scale`).
    """

    def __init__(self, in_features: int, out_features: int, scale: float = DEFAULT_SCALE,
                 learnable_scale: bool = False) -> None:
        value = check_scale(scale)
        super().__init__(in_features, out_features, bias=False)
        self.learnable_scale = bool(learnable_scale)
        self._scale = value
        self.log_scale: nn.Parameter | None
        self.register_parameter(
            "log_scale", nn.Parameter(torch.tensor(math.log(value))) if learnable_scale else None)

    @property
    def scale(self) -> Tensor | float:
        """The current scale ``s``."""
        return self._scale if self.log_scale is None else self.log_scale.exp()

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scale={float(self.scale):g}, learnable_scale={self.learnable_scale}")


@MODELS.register_module()
class CosineShared2FCBBoxHead(Shared2FCBBoxHead):
    """mmdet's ``Shared2FCBBoxHead`` with a :class:`CosineLinear` classifier (``fc_cls``).

    Switched on in a Faster R-CNN config with::

        model = dict(roi_head=dict(bbox_head=dict(type='CosineShared2FCBBoxHead', scale=20.0)))

    Every other argument is ``Shared2FCBBoxHead``'s. The number of outputs still comes from
    the loss (``C + 1`` for softmax cross-entropy), so any mmdet or mmimb classification loss
    fits; the box regressor is unchanged.

    Args:
        scale: the classifier's scale ``s > 0`` (temperature ``1 / s``).
        learnable_scale: learn ``s`` (see :class:`CosineLinear`).
        **kwargs: ``Shared2FCBBoxHead``'s arguments, except ``cls_predictor_cfg``.

    Raises:
        ValueError: if ``cls_predictor_cfg`` is given (this head sets it), or on a bad ``scale``.
        TypeError: on a ``scale`` that is not a real number.
    """

    def __init__(self, *, scale: float = DEFAULT_SCALE, learnable_scale: bool = False,
                 **kwargs: Any) -> None:
        if "cls_predictor_cfg" in kwargs:
            raise ValueError(
                "CosineShared2FCBBoxHead sets cls_predictor_cfg to CosineLinear itself, got "
                f"cls_predictor_cfg={kwargs['cls_predictor_cfg']!r}: drop it, or use "
                "Shared2FCBBoxHead with cls_predictor_cfg=dict(type='CosineLinear', ...)")
        check_scale(scale)
        super().__init__(cls_predictor_cfg=dict(type="CosineLinear", scale=scale,
                                                learnable_scale=learnable_scale), **kwargs)
