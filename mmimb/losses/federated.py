"""The federated loss as a registered RoI-head loss, reusable by any head of mmdet's protocol.

Zhou, Koltun and Kraehenbuehl, "Probabilistic two-stage detection", 2021; detectron2's and
CenterNet2's ``federated_loss`` is a method of one head class. Here it is a loss module over
the core of :mod:`mmimb.losses.functional_federated`, so every ``BBoxHead`` can use it::

    model = dict(roi_head=dict(bbox_head=dict(
        loss_cls=dict(type='FederatedLoss', use_sigmoid=True))))
    custom_hooks = [dict(type='ClassStatsHook')]

Shape shorthand used below:
    N: number of RoIs
    C: number of foreground classes (the classifier's outputs)
"""

from __future__ import annotations

import numpy as np
import torch
from mmdet.registry import MODELS
from torch import Tensor

from mmimb.losses.base import (
    ClassCounts,
    CountsLoss,
    _check_count,
    _check_real,
    check_label_range,
)
from mmimb.losses.functional_federated import (
    federated_class_weights,
    federated_loss,
    sample_federated_classes,
)


@MODELS.register_module()
class FederatedLoss(CountsLoss):
    """Sigmoid cross-entropy over the classes in the batch plus sampled negative classes.

    Zhou et al., "Probabilistic two-stage detection", 2021 (detectron2's ``use_fed_loss``):
    in each forward pass the classes ``S`` are those with a label among the RoIs, plus
    classes drawn without replacement with probability proportional to ``image_count **
    power`` until ``|S| = num_sample_classes``; then

        ``loss[n, c] = BCE(x[n, c], [y_n == c]) * [c in S]``

    and, in a ``BBoxHead`` (``avg_factor`` = number of RoIs), the sum over ``n`` and ``c``
    divided by the number of RoIs, as in the reference. Defaults as published: 50 classes,
    power 0.5. With ``num_sample_classes >= C`` the loss is the plain sigmoid cross-entropy.

    The classifier has ``C`` outputs (no background column; the reference's is never used);
    at inference the head's scores are ``sigmoid(x)`` with a zero background column, which
    mmdet's NMS drops. Counts are image counts (``counts_by = 'image'``: ``ClassStatsHook``
    hands this loss image counts whatever its ``by``). A class without training images is
    sampled as if it had one (see
    :func:`~mmimb.losses.functional_federated.federated_class_weights`). Differences from
    the reference: background labels do not take one of the ``num_sample_classes`` places.

    Sampling uses the global random generator of the logits' device (seeded by mmengine's
    ``randomness``); in distributed training every rank samples for its own RoIs, as in
    detectron2.

    Args:
        use_sigmoid: must be ``True``.
        num_classes: ``C``, or ``None`` (default) to take it from the RoI head.
        class_counts: ``[C]`` image counts or ``'auto'`` (default, filled by
            ``ClassStatsHook``).
        num_sample_classes: classes trained per iteration, ``>= 1``; default 50.
        power: exponent of the image counts in the sampling weights, ``>= 0``; default 0.5.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss.

    Raises:
        ValueError: on an argument outside its range, ``class_counts=None``, or per-class
            vectors of the wrong length.
        TypeError: on an argument of the wrong type.
    """

    use_sigmoid = True
    requires_roi_head = True
    counts_by = "image"
    derived_buffers = ("sample_weight",)

    def __init__(self, use_sigmoid: bool = True, num_classes: int | None = None,
                 class_counts: ClassCounts = "auto", num_sample_classes: int = 50,
                 power: float = 0.5, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        if use_sigmoid is not True:
            raise ValueError(f"use_sigmoid must be True for {type(self).__name__}, got "
                             f"{use_sigmoid!r}")
        if class_counts is None:
            raise ValueError(f"{type(self).__name__} needs class counts: class_counts='auto' "
                             "(with custom_hooks=[dict(type='ClassStatsHook')]) or a list, "
                             "got None")
        self.num_sample_classes = _check_count(num_sample_classes, "num_sample_classes")
        self.power = _check_real(power, "power")
        if self.power < 0:
            raise ValueError(f"power must be >= 0, got {power}")
        super().__init__(num_classes, class_counts, reduction, loss_weight)

    def _counts_changed(self, counts: np.ndarray, device: torch.device) -> None:
        weights = federated_class_weights(torch.as_tensor(counts, dtype=torch.float64),
                                          self.power)
        self.sample_weight = weights.to(device=device, dtype=torch.float32)

    def sample_classes(self, labels: Tensor) -> Tensor:
        """``bool[C]``: the classes of ``labels`` plus sampled negatives (one draw).

        Raises:
            ValueError: when no counts have arrived.
        """
        self._require_counts()
        assert self.sample_weight is not None  # set with the counts
        return sample_federated_classes(labels, self.sample_weight, self.num_sample_classes)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """Loss of ``Tensor[N, C]`` logits against ``int[N]`` labels in ``[0, C]`` (``C`` =
        background), with ``[N]`` weights; ``'none'`` gives ``[N, C]``, zero outside the
        sampled classes."""
        self._require_roi_head()
        reduction = self._reduction(reduction_override)
        assert self.num_classes is not None  # set by the head
        self._check_columns(pred, (self.num_classes,))
        check_label_range(self, pred, target)
        loss = federated_loss(pred, target, self.sample_classes(target))
        if weight is not None and weight.dim() == 1:
            weight = weight[:, None]
        return self.loss_weight * self._reduce(loss, weight, reduction, avg_factor, pred.numel())

    def extra_repr(self) -> str:
        counts = "auto" if self.counts_from_dataset else "given"
        return (f"num_classes={self.num_classes}, num_sample_classes={self.num_sample_classes}"
                f", power={self.power}, class_counts={counts}, reduction={self.reduction!r}, "
                f"loss_weight={self.loss_weight}")
