"""mmdet's Seesaw loss, sized by the RoI head it sits in.

mmdet's ``SeesawLoss`` (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR
2021) keeps a buffer of cumulative class counts whose length is fixed when the loss is built,
from its own ``num_classes`` (default 1203, LVIS v0.5), so a config has to write the head's
``num_classes`` a second time, and a wrong second number fails with a bare ``assert`` when the
head is built. :class:`HeadSizedSeesawLoss` is that same loss (the computation is mmdet's, not a
copy) whose ``num_classes`` may be left out: the head sizes it when it asks for its classifier
channels::

    model = dict(roi_head=dict(bbox_head=dict(
        cls_predictor_cfg=dict(type='NormedLinear', tempearture=20),
        loss_cls=dict(type='HeadSizedSeesawLoss', p=0.8, q=2.0))))
"""

from __future__ import annotations

from typing import Any

import torch
from mmdet.models.losses import SeesawLoss
from mmdet.registry import MODELS
from torch import Tensor

from mmimb.losses.base import _check_count, _check_real, _check_reduction


@MODELS.register_module()
class HeadSizedSeesawLoss(SeesawLoss):
    """mmdet's ``SeesawLoss`` whose class count comes from the head.

    The loss is softmax cross-entropy over ``C`` classes plus an objectness pair (the classifier
    has ``C + 2`` outputs), with the logit of every negative class ``j`` of a sample of class
    ``i`` shifted by ``log S_ij``: ``S_ij = M_ij * C_ij``, the mitigation factor ``M_ij =
    min(1, N_j / N_i) ** p`` from the cumulative counts ``N`` of the positive RoIs seen so far,
    and the compensation factor ``C_ij = max(1, sigma_j / sigma_i) ** q`` from the predicted
    probabilities. Defaults as published: ``p=0.8``, ``q=2.0``, ``eps=0.01``.

    Args:
        num_classes: number of foreground classes ``C``; ``None`` (the default) takes it from
            the ``BBoxHead`` that builds this loss. Given, it must equal the head's.
        p: exponent of the mitigation factor, ``>= 0`` (0 turns it off).
        q: exponent of the compensation factor, ``>= 0`` (0 turns it off).
        eps: floor of the probabilities in the compensation factor, ``> 0``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: weight of the loss.
        return_dict: return the classification and objectness terms as a dict (mmdet's default).

    Raises:
        TypeError: on a non-numeric ``p``, ``q``, ``eps`` or a non-int ``num_classes``.
        ValueError: on a negative ``p`` or ``q``, ``eps <= 0``, ``num_classes < 1``, an unknown
            ``reduction``, a head whose ``num_classes`` differs from the one given here (both
            numbers named), or, in ``forward``, logits that are not ``C + 2`` wide.
    """

    num_classes: int

    def __init__(self, num_classes: int | None = None, p: float = 0.8, q: float = 2.0,
                 eps: float = 1e-2, reduction: str = "mean", loss_weight: float = 1.0,
                 return_dict: bool = True) -> None:
        for value, name in ((p, "p"), (q, "q")):
            if _check_real(value, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if _check_real(eps, "eps") <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if num_classes is not None:
            _check_count(num_classes, "num_classes")
        _check_reduction(reduction, "reduction")
        super().__init__(p=p, q=q, num_classes=num_classes or 1, eps=eps, reduction=reduction,
                         loss_weight=loss_weight, return_dict=return_dict)
        self._given_classes = num_classes

    def get_cls_channels(self, num_classes: int) -> int:
        """Size the count buffer for the head's ``num_classes``; return ``num_classes + 2``.

        Raises:
            ValueError: if the loss was given a different ``num_classes``.
        """
        _check_count(num_classes, "num_classes")
        if self._given_classes is not None and self._given_classes != num_classes:
            raise ValueError(
                f"HeadSizedSeesawLoss: the head has num_classes={num_classes} but the loss has "
                f"num_classes={self._given_classes}; leave the loss's num_classes out (the head "
                "sets it)")
        if self.num_classes != num_classes:
            self.num_classes = num_classes
            self.register_buffer("cum_samples", torch.zeros(num_classes + 1, dtype=torch.float))
        return super().get_cls_channels(num_classes)

    def forward(self, cls_score: Tensor, labels: Tensor, *args: Any,
                **kwargs: Any) -> Tensor | dict[str, Tensor]:
        """mmdet's ``SeesawLoss.forward``, after checking the width of ``cls_score``.

        Raises:
            ValueError: if ``cls_score`` is not ``num_classes + 2`` wide (for example a loss
                used outside a head without its ``num_classes``).
        """
        if cls_score.size(-1) != self.num_classes + 2:
            raise ValueError(
                f"HeadSizedSeesawLoss: cls_score has {cls_score.size(-1)} columns but "
                f"num_classes={self.num_classes} needs {self.num_classes + 2}; outside a "
                "BBoxHead, give num_classes")
        return super().forward(cls_score, labels, *args, **kwargs)
