"""Registered loss modules: focal and class-balanced losses with mmdet's reduction contract.

Each module validates its arguments in ``__init__``, takes its per-class weights from explicit
values or from class counts (Cui et al., "Class-Balanced Loss Based on Effective Number of
Samples", CVPR 2019, via :func:`mmimb.stats.class_balanced_weights`), calls a functional core
from :mod:`mmimb.losses.functional` and reduces with ``weight``, ``avg_factor`` and
``reduction_override`` exactly like mmdet's losses.

Class counts, the number of classes and mmdet's head protocol are handled by
:class:`mmimb.losses.base.CountsLoss`: with ``class_counts='auto'`` the number of classes need
not be given; it comes from the RoI head (``get_cls_channels``) or from the training set
(:class:`mmimb.hooks.ClassStatsHook`). In an RoI head a sigmoid loss gets ``C`` classifier
outputs and a softmax loss ``C + 1``; dense heads size their classifier from ``use_sigmoid``.

Shape shorthand used below:
    N: number of samples (anchors or RoIs)
    C: number of foreground classes (``num_classes``)
    K: number of softmax columns, ``C`` or ``C + 1`` with mmdet's background column
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mmdet.registry import MODELS
from torch import Tensor

from mmimb.losses.base import (
    ClassCounts,
    CountsLoss,
    _as_vector,
    _check_real,
    check_label_range,
)
from mmimb.losses.functional import (
    sigmoid_focal_loss,
    sigmoid_focal_loss_sum,
    softmax_focal_loss,
)
from mmimb.stats import class_balanced_weights


def _check_gamma(gamma: float) -> float:
    gamma = _check_real(gamma, "gamma")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    return gamma


def _check_beta(beta: float) -> float:
    beta = _check_real(beta, "beta")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta}")
    return beta


def _check_alpha(alpha: float | Sequence[float] | None) -> float | np.ndarray | None:
    if alpha is None:
        return None
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        arr = np.asarray([float(alpha)])
        scalar = True
    else:
        arr = _as_vector(alpha, "alpha")  # type: ignore[arg-type]
        scalar = False
    if not np.all((arr >= 0) & (arr <= 1)):
        raise ValueError(f"alpha must lie in [0, 1], got {arr.tolist() if not scalar else alpha}")
    return float(arr[0]) if scalar else arr


class _ClassWeightedLoss(CountsLoss):
    """Per-class weights, explicit or class-balanced from counts, on top of :class:`CountsLoss`.

    Args:
        num_classes: number of foreground classes ``C``, or ``None`` to take it from the
            per-class vectors, the RoI head or (with ``class_counts='auto'``) the training set.
        class_weight: ``[C]`` explicit per-class weights (>= 0), or ``None``.
        class_counts: ``[C]`` training counts per class, ``'auto'`` to receive them from
            :class:`mmimb.hooks.ClassStatsHook` before the first iteration, or ``None``. The
            weights are then ``class_balanced_weights(counts, beta)`` (summing to ``C``; a class
            with no instances counts as one, so it gets the largest finite weight).
        beta: class-balancing hyper-parameter in ``[0, 1)``; ``0`` gives equal weights.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss.
        vectors: lengths of the subclass's other per-class arguments, by name.
    """

    derived_buffers = ("class_weight",)

    def __init__(self, num_classes: int | None, class_weight: Sequence[float] | None,
                 class_counts: ClassCounts, beta: float, reduction: str, loss_weight: float,
                 vectors: dict[str, int] | None = None) -> None:
        self.beta = _check_beta(beta)
        if class_weight is not None and class_counts is not None:
            raise ValueError("give class_weight or class_counts, not both")
        lengths = dict(vectors or {})
        weight_arr = None if class_weight is None else _as_vector(class_weight, "class_weight")
        if weight_arr is not None:
            lengths["class_weight"] = len(weight_arr)
            if np.any(weight_arr < 0):
                raise ValueError(f"class_weight must be >= 0, got {weight_arr.tolist()}")
        super().__init__(num_classes, class_counts, reduction, loss_weight, lengths)
        if weight_arr is not None:
            self.class_weight = torch.as_tensor(weight_arr, dtype=torch.float32)

    def _counts_changed(self, counts: np.ndarray, device: torch.device) -> None:
        weights = class_balanced_weights(counts, self.beta)
        self.class_weight = torch.as_tensor(weights, dtype=torch.float32, device=device)

    def class_weights(self) -> Tensor | None:
        """``float32[C]`` per-class weights in use, or ``None`` for unweighted classes.

        Raises:
            ValueError: with ``class_counts='auto'`` when no counts have arrived.
        """
        if self.takes_counts:
            self._require_counts()
        return self.class_weight

    def extra_repr(self) -> str:
        counts = "auto" if self.counts_from_dataset else self.takes_counts
        return (f"num_classes={self.num_classes}, beta={self.beta}, class_counts={counts}, "
                f"reduction={self.reduction!r}, loss_weight={self.loss_weight}")


def _sigmoid_forward(module: _ClassWeightedLoss, pred: Tensor, target: Tensor,
                     weight: Tensor | None, avg_factor: float | None,
                     reduction_override: str | None, alpha: float | Tensor | None,
                     gamma: float, use_compile: bool) -> Tensor:
    """Sigmoid focal / BCE with mmdet's contract; integer labels take the fused path."""
    reduction = module._reduction(reduction_override)
    module._check_columns(pred, (module.num_classes,) if module.num_classes else ())
    class_weight = module.class_weights()
    if target.dim() == 1 and reduction != "none":
        total = sigmoid_focal_loss_sum(pred, target, alpha, gamma, class_weight, weight,
                                       use_compile=None if use_compile else False)
        loss = module._reduce(total, None, reduction, avg_factor, pred.numel())
    else:
        elementwise = sigmoid_focal_loss(pred, target, alpha, gamma, class_weight)
        if weight is not None and weight.dim() == 1:
            weight = weight[:, None]
        loss = module._reduce(elementwise, weight, reduction, avg_factor, pred.numel())
    return module.loss_weight * loss


def _softmax_forward(module: _ClassWeightedLoss, pred: Tensor, target: Tensor,
                     weight: Tensor | None, avg_factor: float | None,
                     reduction_override: str | None, gamma: float) -> Tensor:
    """Softmax focal / CE with mmdet's contract; a background column gets weight 1."""
    reduction = module._reduction(reduction_override)
    num_classes = module.num_classes
    module._check_columns(pred, (num_classes, num_classes + 1) if num_classes else ())
    check_label_range(module, pred, target)
    class_weight = module.class_weights()
    if class_weight is not None and pred.shape[1] == len(class_weight) + 1:
        # Background weight 1: the mean of class-balanced weights, which sum to C.
        class_weight = torch.cat([class_weight, class_weight.new_ones(1)])
    loss = softmax_focal_loss(pred, target, gamma, class_weight)
    return module.loss_weight * module._reduce(loss, weight, reduction, avg_factor,
                                               pred.shape[0])


@MODELS.register_module()
class ClassBalancedFocalLoss(_ClassWeightedLoss):
    """Sigmoid focal loss with per-class ``alpha`` and per-class (class-balanced) weights.

    ``loss[n, c] = w[c] * alpha_t[c] * (1 - p_t) ** gamma * BCE(x[n, c], t[n, c])`` (Lin et al.,
    ICCV 2017), with ``w`` from ``class_weight``, from ``class_counts`` (Cui et al., CVPR 2019:
    ``w[c] ∝ (1 - beta) / (1 - beta ** n[c])``, summing to ``C``), or 1. The weight scales both
    the positive and the negative term of class ``c``. With scalar ``alpha`` and no weights it
    equals mmdet's ``FocalLoss``.

    For ``RetinaHead``-like heads: ``use_sigmoid=True`` must appear in the config, as the head
    reads it from the config dict to size its classifier. Integer labels with ``'mean'`` or
    ``'sum'`` take the fused path (:func:`~mmimb.losses.functional.sigmoid_focal_loss_sum`);
    ``[N, C]`` targets and ``reduction='none'`` the general one.

    Args:
        use_sigmoid: must be ``True`` (use :class:`SoftmaxFocalLoss` for softmax heads).
        num_classes: number of classes ``C``, or ``None`` to take it from the per-class
            vectors, the RoI head or (``class_counts='auto'``) the training set.
        gamma: focusing parameter, ``>= 0``.
        alpha: positive-term weight in ``[0, 1]``, scalar or ``[C]``; ``None`` for none.
        class_weight: explicit ``[C]`` per-class weights, or ``None``.
        class_counts: ``[C]`` counts, ``'auto'`` (filled by ``ClassStatsHook``) or ``None``.
        beta: class-balancing parameter in ``[0, 1)``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss.
        use_compile: run the fused path through ``torch.compile`` (unless
            ``MMIMB_DISABLE_COMPILE=1``); ``False`` runs it eagerly, with the same results.

    Raises:
        ValueError: on an argument outside its range, or per-class vectors of different lengths.
        TypeError: on an argument of the wrong type.
    """

    use_sigmoid = True

    def __init__(self, use_sigmoid: bool = True, num_classes: int | None = None,
                 gamma: float = 2.0, alpha: float | Sequence[float] | None = 0.25,
                 class_weight: Sequence[float] | None = None, class_counts: ClassCounts = None,
                 beta: float = 0.999, reduction: str = "mean", loss_weight: float = 1.0,
                 use_compile: bool = True) -> None:
        if use_sigmoid is not True:
            raise ValueError(f"use_sigmoid must be True for {type(self).__name__}, got "
                             f"{use_sigmoid!r}; use SoftmaxFocalLoss for softmax heads")
        self.gamma = _check_gamma(gamma)
        alpha_checked = _check_alpha(alpha)
        vectors = {"alpha": len(alpha_checked)} if isinstance(alpha_checked, np.ndarray) else {}
        super().__init__(num_classes, class_weight, class_counts, beta, reduction, loss_weight,
                         vectors)
        self.alpha: float | None = None
        self.register_buffer("alpha_vector", None, persistent=False)
        if isinstance(alpha_checked, np.ndarray):
            self.alpha_vector = torch.as_tensor(alpha_checked, dtype=torch.float32)
        else:
            self.alpha = alpha_checked
        self.use_compile = bool(use_compile)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """Loss of ``Tensor[N, C]`` logits against ``int[N]`` labels (``C`` = background) or
        ``[N, C]`` targets, with ``[N]`` or ``[N, C]`` weights; ``'none'`` gives ``[N, C]``."""
        alpha = self.alpha_vector if self.alpha_vector is not None else self.alpha
        return _sigmoid_forward(self, pred, target, weight, avg_factor, reduction_override,
                                alpha, self.gamma, self.use_compile)


@MODELS.register_module()
class SoftmaxFocalLoss(_ClassWeightedLoss):
    """Softmax focal loss for heads with a background column (mmdet's RoI heads).

    ``loss[n] = w[y] * (1 - p_y) ** gamma * (-log p_y)`` with ``p = softmax(x[n])`` (Lin et al.,
    ICCV 2017); ``gamma = 0`` is the softmax cross-entropy. ``w`` comes from ``class_weight``,
    from ``class_counts`` (class-balanced, Cui et al., CVPR 2019) or is 1; the background
    column (``K = C + 1``) always gets weight 1.

    Args:
        use_sigmoid: must be ``False`` (read by mmdet's heads).
        num_classes: number of foreground classes ``C``, or ``None`` to take it from the
            per-class vectors, the RoI head or (``class_counts='auto'``) the training set.
        gamma: focusing parameter, ``>= 0``.
        class_weight: explicit ``[C]`` per-class weights, or ``None``.
        class_counts: ``[C]`` counts, ``'auto'`` (filled by ``ClassStatsHook``) or ``None``.
        beta: class-balancing parameter in ``[0, 1)``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss.

    Raises:
        ValueError: on an argument outside its range, or per-class vectors of different lengths.
        TypeError: on an argument of the wrong type.
    """

    use_sigmoid = False

    def __init__(self, use_sigmoid: bool = False, num_classes: int | None = None,
                 gamma: float = 2.0, class_weight: Sequence[float] | None = None,
                 class_counts: ClassCounts = None, beta: float = 0.999, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        if use_sigmoid is not False:
            raise ValueError(f"use_sigmoid must be False for {type(self).__name__}, got "
                             f"{use_sigmoid!r}; use ClassBalancedFocalLoss for sigmoid heads")
        self.gamma = _check_gamma(gamma)
        super().__init__(num_classes, class_weight, class_counts, beta, reduction, loss_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """Loss of ``Tensor[N, K]`` logits against ``int[N]`` labels in ``[0, K)``, with ``[N]``
        weights; ``'none'`` gives ``[N]``."""
        return _softmax_forward(self, pred, target, weight, avg_factor, reduction_override,
                                self.gamma)


@MODELS.register_module()
class ClassBalancedCrossEntropyLoss(_ClassWeightedLoss):
    """Cross-entropy with per-class (class-balanced) weights, softmax or sigmoid.

    Softmax (``use_sigmoid=False``, RoI heads): ``loss[n] = -w[y] log softmax(x[n])[y]``, the
    background column weighted 1. Sigmoid (``use_sigmoid=True``, dense heads):
    ``loss[n, c] = w[c] * BCE(x[n, c], t[n, c])``, which, unlike mmdet's
    ``CrossEntropyLoss(use_sigmoid=True, class_weight=...)`` (a ``pos_weight``), scales both
    terms. ``w`` from ``class_weight``, from ``class_counts`` (Cui et al., CVPR 2019) or 1.

    Args:
        use_sigmoid: sigmoid BCE (``True``) or softmax CE (``False``).
        num_classes: number of foreground classes ``C``, or ``None`` to take it from the
            per-class vectors, the RoI head or (``class_counts='auto'``) the training set.
        class_weight: explicit ``[C]`` per-class weights, or ``None``.
        class_counts: ``[C]`` counts, ``'auto'`` (filled by ``ClassStatsHook``) or ``None``.
        beta: class-balancing parameter in ``[0, 1)``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss.
        use_compile: for the sigmoid form, as in :class:`ClassBalancedFocalLoss`.

    Raises:
        ValueError: on an argument outside its range, or per-class vectors of different lengths.
        TypeError: on an argument of the wrong type.
    """

    def __init__(self, use_sigmoid: bool = False, num_classes: int | None = None,
                 class_weight: Sequence[float] | None = None, class_counts: ClassCounts = None,
                 beta: float = 0.999, reduction: str = "mean", loss_weight: float = 1.0,
                 use_compile: bool = True) -> None:
        if not isinstance(use_sigmoid, bool):
            raise TypeError(f"use_sigmoid must be a bool, got {use_sigmoid!r}")
        super().__init__(num_classes, class_weight, class_counts, beta, reduction, loss_weight)
        self.use_sigmoid = use_sigmoid
        self.use_compile = bool(use_compile)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """As :meth:`ClassBalancedFocalLoss.forward` (sigmoid) or
        :meth:`SoftmaxFocalLoss.forward` (softmax), with ``gamma = 0`` and no ``alpha``."""
        if self.use_sigmoid:
            return _sigmoid_forward(self, pred, target, weight, avg_factor, reduction_override,
                                    None, 0.0, self.use_compile)
        return _softmax_forward(self, pred, target, weight, avg_factor, reduction_override, 0.0)
