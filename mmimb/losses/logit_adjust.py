"""Prior-adjusted RoI classification losses: balanced softmax, post-hoc logit adjustment, ECM.

Registered modules over the cores of :mod:`mmimb.losses.functional_logit_adjust`, with mmdet's
reduction contract and head protocol (:class:`mmimb.losses.base.CountsLoss`). All three take
their class counts from ``class_counts`` (default ``'auto'``: from the training set through
:class:`mmimb.hooks.ClassStatsHook`) and their number of classes from the RoI head, so a
config names only the loss::

    model = dict(roi_head=dict(bbox_head=dict(loss_cls=dict(type='BalancedSoftmaxLoss'))))
    custom_hooks = [dict(type='ClassStatsHook')]

They are RoI-head losses: a head that does not follow mmdet's protocol (``RetinaHead`` and
the other dense heads) never calls ``get_cls_channels``, and the first forward (or
``get_activation``) raises a ``ValueError`` that says so.

Shape shorthand used below:
    N: number of RoIs
    C: number of foreground classes
    K: ``C + 1`` classifier outputs, the last one the background
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mmdet.models.losses import accuracy
from mmdet.registry import MODELS
from torch import Tensor

from mmimb.losses.base import ClassCounts, CountsLoss, _check_real, check_label_range
from mmimb.losses.functional_logit_adjust import (
    ecm_loss,
    ecm_scores,
    effective_class_margins,
    logit_adjusted_cross_entropy,
    logit_adjustment,
    posthoc_adjusted_softmax,
)


def _check_use_sigmoid(cls: type, use_sigmoid: Any, expected: bool) -> None:
    if use_sigmoid is not expected:
        raise ValueError(f"use_sigmoid must be {expected} for {cls.__name__}, got "
                         f"{use_sigmoid!r}")


def _check_needs_counts(cls: type, class_counts: ClassCounts) -> None:
    if class_counts is None:
        raise ValueError(f"{cls.__name__} needs class counts: class_counts='auto' (with "
                         "custom_hooks=[dict(type='ClassStatsHook')]) or a list, got None")


def _check_tau(tau: float) -> float:
    tau = _check_real(tau, "tau")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    return tau


class _LogitAdjustedLoss(CountsLoss):
    """Softmax cross-entropy over ``C + 1`` columns with the adjustment ``a`` of
    :func:`~mmimb.losses.functional_logit_adjust.logit_adjustment` in a buffer."""

    use_sigmoid = False
    requires_roi_head = True
    derived_buffers = ("adjustment",)

    def __init__(self, use_sigmoid: bool, num_classes: int | None, tau: float,
                 class_counts: ClassCounts, reduction: str, loss_weight: float) -> None:
        _check_use_sigmoid(type(self), use_sigmoid, False)
        _check_needs_counts(type(self), class_counts)
        self.tau = _check_tau(tau)
        super().__init__(num_classes, class_counts, reduction, loss_weight)

    def _counts_changed(self, counts: np.ndarray, device: torch.device) -> None:
        adjustment = logit_adjustment(torch.as_tensor(counts, dtype=torch.float64), self.tau)
        self.adjustment = adjustment.to(device=device, dtype=torch.float32)

    def current_adjustment(self) -> Tensor:
        """``float32[C + 1]``: ``tau * log(C n_c / sum n)`` for the classes, 0 for background.

        Raises:
            ValueError: when no counts have arrived.
        """
        self._require_counts()
        assert self.adjustment is not None  # set with the counts
        return self.adjustment

    def _train_adjustment(self) -> Tensor | None:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """Loss of ``Tensor[N, C + 1]`` logits against ``int[N]`` labels in ``[0, C]``
        (``C`` = background), with ``[N]`` weights; ``'none'`` gives ``[N]``."""
        self._require_roi_head()
        reduction = self._reduction(reduction_override)
        assert self.num_classes is not None  # set by the head
        self._check_columns(pred, (self.num_classes + 1,))
        check_label_range(self, pred, target)
        loss = logit_adjusted_cross_entropy(pred, target, self._train_adjustment())
        return self.loss_weight * self._reduce(loss, weight, reduction, avg_factor,
                                               pred.shape[0])

    def extra_repr(self) -> str:
        counts = "auto" if self.counts_from_dataset else "given"
        return (f"num_classes={self.num_classes}, tau={self.tau}, class_counts={counts}, "
                f"reduction={self.reduction!r}, loss_weight={self.loss_weight}")


@MODELS.register_module()
class BalancedSoftmaxLoss(_LogitAdjustedLoss):
    """Balanced softmax / logit-adjusted cross-entropy for RoI heads (training-time adjustment).

    ``loss[n] = -log softmax(x[n] + a)[y_n]`` with ``a[c] = tau * log(C n_c / sum_k n_k)`` for
    the foreground classes and ``a[C] = 0`` for the background (Ren et al., "Balanced
    Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020, for ``tau = 1``; Menon et
    al., "Long-tail learning via logit adjustment", ICLR 2021, eq. 11, for any ``tau``). The
    adjustment exists only in training: at inference the head scores the raw logits with a
    plain softmax, which is then balanced over the foreground classes. Why the background is
    not adjusted, and why equal counts give plain cross-entropy: see
    :func:`~mmimb.losses.functional_logit_adjust.logit_adjustment`. A class with zero count
    counts as one.

    Args:
        use_sigmoid: must be ``False`` (read by mmdet's heads).
        num_classes: ``C``, or ``None`` (default) to take it from the RoI head.
        tau: scale of the adjustment, ``>= 0``; default 1 (balanced softmax). ``0`` is plain
            softmax cross-entropy.
        class_counts: ``[C]`` counts (instances by default) or ``'auto'`` (default, filled by
            ``ClassStatsHook``).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss.

    Raises:
        ValueError: on an argument outside its range, ``class_counts=None``, or per-class
            vectors of the wrong length.
        TypeError: on an argument of the wrong type.
    """

    def __init__(self, use_sigmoid: bool = False, num_classes: int | None = None,
                 tau: float = 1.0, class_counts: ClassCounts = "auto", reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(use_sigmoid, num_classes, tau, class_counts, reduction, loss_weight)

    def _train_adjustment(self) -> Tensor | None:
        return self.current_adjustment()


@MODELS.register_module()
class PostHocLogitAdjustedLoss(_LogitAdjustedLoss):
    """Plain softmax cross-entropy in training; logit adjustment at inference (post hoc).

    Menon et al., ICLR 2021, post-hoc correction: a head trained with ordinary cross-entropy
    scores RoIs with ``softmax(x - a)``, ``a`` as in :class:`BalancedSoftmaxLoss` (background
    not adjusted). Training with this loss is training with mmdet's ``CrossEntropyLoss``, in
    value and gradient, so the loss is a config switch on an existing model: evaluate the
    checkpoint of a plain cross-entropy model with ``tools/test.py`` and a config whose
    ``loss_cls`` is this loss, with ``custom_hooks=[dict(type='ClassStatsHook')]``. The
    checkpoint has no ``class_counts`` buffer; it loads all the same (strict or not), and the
    hook gives the loss the counts of the config's training set before testing.

    Args:
        use_sigmoid: must be ``False`` (read by mmdet's heads).
        num_classes: ``C``, or ``None`` (default) to take it from the RoI head.
        tau: scale of the adjustment, ``>= 0``; default 1 (Bayes-optimal for the balanced
            error in the paper). ``0`` gives the plain softmax scores.
        class_counts: ``[C]`` counts (instances by default) or ``'auto'`` (default, filled by
            ``ClassStatsHook``).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss.

    Raises:
        ValueError: on an argument outside its range, ``class_counts=None``, or per-class
            vectors of the wrong length.
        TypeError: on an argument of the wrong type.
    """

    def __init__(self, use_sigmoid: bool = False, num_classes: int | None = None,
                 tau: float = 1.0, class_counts: ClassCounts = "auto", reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(use_sigmoid, num_classes, tau, class_counts, reduction, loss_weight)

    def _train_adjustment(self) -> Tensor | None:
        return None

    @property
    def custom_activation(self) -> bool:
        return True

    def _roi_scores(self, cls_score: Tensor) -> Tensor:
        return posthoc_adjusted_softmax(cls_score, self.current_adjustment())

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Top-1 accuracy (percent) of the adjusted scores, the ones used at inference."""
        if not self._counts_ready:  # training needs no counts; neither does its log
            return {"acc": accuracy(cls_score, labels)}
        return {"acc": accuracy(self._roi_scores(cls_score), labels)}


@MODELS.register_module()
class EffectiveClassMarginLoss(CountsLoss):
    """Effective class-margin (ECM) loss for RoI heads with a sigmoid background column.

    Cho and Kraehenbuehl, "Long-tail Detection with Effective Class-Margins", ECCV 2022, as in
    the reference implementation (github.com/janghyuncho/ECM-Loss): each of the ``C + 1``
    columns is a binary classifier trained with

        ``loss[n, k] = w[k] * BCE(2 x[n, k] + margin[k], [y_n == k])``,
        ``margin[k] = (1/4) log(n_k / (N - n_k))``, ``w[k] = a log((1 + a) / a)``,
        ``a = (N - n_k) / n_k``

    where ``n_k`` are the training image counts of the classes, then ``n_C = bg_fg_ratio *
    sum_c n_c`` for the background, and ``N = sum_k n_k``
    (:func:`~mmimb.losses.functional_logit_adjust.effective_class_margins`). Inference as in
    the reference: ``sigmoid(x)`` per column, foreground scores multiplied by
    ``1 - sigmoid(x_bg)``. The reference pairs it with a cosine classifier,
    ``cls_predictor_cfg=dict(type='NormedLinear', tempearture=20)``.

    The counts are image counts (``counts_by = 'image'``: ``ClassStatsHook`` hands this loss
    image counts whatever its ``by``). A class with zero count counts as one.

    Args:
        use_sigmoid: must be ``True``.
        num_classes: ``C``, or ``None`` (default) to take it from the RoI head.
        class_counts: ``[C]`` image counts or ``'auto'`` (default, filled by
            ``ClassStatsHook``).
        bg_fg_ratio: background count over the total foreground count, ``> 0``; default
            6.3313, the reference's (``fg_bg_ratio`` there), measured on LVIS with Mask R-CNN.
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
    derived_buffers = ("margin", "ecm_weight")

    def __init__(self, use_sigmoid: bool = True, num_classes: int | None = None,
                 class_counts: ClassCounts = "auto", bg_fg_ratio: float = 6.3313,
                 reduction: str = "mean", loss_weight: float = 1.0) -> None:
        _check_use_sigmoid(type(self), use_sigmoid, True)
        _check_needs_counts(type(self), class_counts)
        self.bg_fg_ratio = _check_real(bg_fg_ratio, "bg_fg_ratio")
        if self.bg_fg_ratio <= 0:
            raise ValueError(f"bg_fg_ratio must be > 0, got {bg_fg_ratio}")
        super().__init__(num_classes, class_counts, reduction, loss_weight)

    @property
    def background_column(self) -> bool:
        return True

    def _counts_changed(self, counts: np.ndarray, device: torch.device) -> None:
        margin, weight = effective_class_margins(torch.as_tensor(counts, dtype=torch.float64),
                                                 self.bg_fg_ratio)
        self.margin = margin.to(device=device, dtype=torch.float32)
        self.ecm_weight = weight.to(device=device, dtype=torch.float32)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """Loss of ``Tensor[N, C + 1]`` logits against ``int[N]`` labels in ``[0, C]``
        (``C`` = background), with ``[N]`` weights; ``'none'`` gives ``[N, C + 1]``."""
        self._require_roi_head()
        reduction = self._reduction(reduction_override)
        assert self.num_classes is not None  # set by the head
        self._check_columns(pred, (self.num_classes + 1,))
        check_label_range(self, pred, target)
        self._require_counts()
        assert self.margin is not None and self.ecm_weight is not None  # set with the counts
        loss = ecm_loss(pred, target, self.margin, self.ecm_weight)
        if weight is not None and weight.dim() == 1:
            weight = weight[:, None]
        return self.loss_weight * self._reduce(loss, weight, reduction, avg_factor, pred.numel())

    def _roi_scores(self, cls_score: Tensor) -> Tensor:
        return ecm_scores(cls_score)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Objectness accuracy (background logit > 0 against background labels) and class
        accuracy (arg-max over the foreground columns) of the positive RoIs, in percent."""
        num_classes = cls_score.shape[1] - 1
        is_background = labels == num_classes
        if cls_score.shape[0] == 0:
            zero = cls_score.new_zeros(1)
            return {"acc_objectness": zero, "acc_classes": zero}
        said_background = cls_score[:, -1].detach() > 0
        objectness = (said_background == is_background).float().mean(0, keepdim=True) * 100
        positive = ~is_background
        return {"acc_objectness": objectness,
                "acc_classes": accuracy(cls_score[positive, :-1], labels[positive])}

    def extra_repr(self) -> str:
        counts = "auto" if self.counts_from_dataset else "given"
        return (f"num_classes={self.num_classes}, bg_fg_ratio={self.bg_fg_ratio}, "
                f"class_counts={counts}, reduction={self.reduction!r}, "
                f"loss_weight={self.loss_weight}")
