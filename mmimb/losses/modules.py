"""Registered loss modules: focal and class-balanced losses with mmdet's reduction contract.

Each module validates its arguments in ``__init__``, takes its per-class weights from explicit
values or from class counts (Cui et al., "Class-Balanced Loss Based on Effective Number of
Samples", CVPR 2019, via :func:`mmimb.stats.class_balanced_weights`), calls a functional core
from :mod:`mmimb.losses.functional` and reduces with ``weight``, ``avg_factor`` and
``reduction_override`` exactly like mmdet's losses.

Class counts, given or filled in from the training set (``class_counts='auto'`` together with
:class:`mmimb.hooks.ClassStatsHook`), live in the persistent ``int64`` buffer ``class_counts``,
so they are saved in checkpoints and restored on resume; ``-1`` marks counts not yet known.

Shape shorthand used below:
    N: number of samples (anchors or RoIs)
    C: number of foreground classes (``num_classes``)
    K: number of softmax columns, ``C`` or ``C + 1`` with mmdet's background column
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor, nn

from mmimb.losses.functional import (
    sigmoid_focal_loss,
    sigmoid_focal_loss_sum,
    softmax_focal_loss,
)
from mmimb.stats import class_balanced_weights, validate_counts

_REDUCTIONS = ("none", "mean", "sum")
_UNSET = -1

ClassCounts = Sequence[float] | np.ndarray | str | None


def _check_reduction(reduction: str | None, name: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name} must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


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


def _as_vector(value: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


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


class _ClassWeightedLoss(nn.Module):
    """Shared argument checks, per-class weights from counts, and the reduction contract.

    Args:
        num_classes: number of foreground classes ``C``; required with ``class_counts='auto'``,
            otherwise inferred from the per-class vectors (and checked against them).
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

    use_sigmoid: bool

    def __init__(self, num_classes: int | None, class_weight: Sequence[float] | None,
                 class_counts: ClassCounts, beta: float, reduction: str, loss_weight: float,
                 vectors: dict[str, int] | None = None) -> None:
        super().__init__()
        _check_reduction(reduction, "reduction")
        self.reduction = reduction
        self.loss_weight = _check_real(loss_weight, "loss_weight")
        self.beta = _check_beta(beta)
        if class_weight is not None and class_counts is not None:
            raise ValueError("give class_weight or class_counts, not both")
        if isinstance(class_counts, str) and class_counts != "auto":
            raise ValueError(f"class_counts must be a sequence, 'auto' or None, got "
                             f"{class_counts!r}")
        self.counts_from_dataset = class_counts == "auto"

        lengths = dict(vectors or {})
        weight_arr = None if class_weight is None else _as_vector(class_weight, "class_weight")
        if weight_arr is not None:
            lengths["class_weight"] = len(weight_arr)
            if np.any(weight_arr < 0):
                raise ValueError(f"class_weight must be >= 0, got {weight_arr.tolist()}")
        counts_arr = None
        if class_counts is not None and not isinstance(class_counts, str):
            counts_arr = _as_vector(class_counts, "class_counts")
            lengths["class_counts"] = len(counts_arr)
        self.num_classes = self._resolve_num_classes(num_classes, lengths)

        self.register_buffer("class_weight", None, persistent=False)
        if weight_arr is not None:
            self.class_weight = torch.as_tensor(weight_arr, dtype=torch.float32)
        self.register_buffer("class_counts", None)
        if class_counts is not None:
            assert self.num_classes is not None  # guaranteed by _resolve_num_classes
            self.class_counts = torch.full((self.num_classes,), _UNSET, dtype=torch.int64)
        self._counts_ready = False
        if counts_arr is not None:
            self.set_class_counts(counts_arr)

    def _resolve_num_classes(self, num_classes: int | None, lengths: dict[str, int]) -> int | None:
        if num_classes is not None and (
                isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise TypeError(f"num_classes must be an int, got {num_classes!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_classes is None and self.counts_from_dataset:
            raise ValueError("class_counts='auto' needs num_classes, the length of the counts")
        expected = num_classes if num_classes is not None else next(iter(lengths.values()), None)
        for name, length in lengths.items():
            if length != expected:
                source = "num_classes" if num_classes is not None else "the other vectors"
                raise ValueError(f"{name} has {length} entries but {source} gives {expected} "
                                 f"classes ({lengths})")
        return expected

    # -- class counts ------------------------------------------------------------------------

    def set_class_counts(self, counts: Sequence[float] | np.ndarray) -> None:
        """Store per-class training counts and recompute the class-balanced weights.

        Args:
            counts: ``[C]`` non-negative whole numbers (instances or images per class).

        Raises:
            ValueError: if this loss takes no counts, or the counts have the wrong length,
                are negative, or not whole numbers.
        """
        if self.class_counts is None:
            raise ValueError(f"{type(self).__name__} was built without class_counts; set "
                             "class_counts='auto' or a list to weight classes by counts")
        arr = validate_counts(counts, len(self.class_counts))
        if np.any(arr != np.round(arr)):
            raise ValueError(f"class_counts must be whole numbers, got {arr.tolist()}")
        self.class_counts.copy_(torch.as_tensor(arr, dtype=torch.int64))
        self._refresh_weights()

    def get_class_counts(self) -> np.ndarray | None:
        """``int64[C]`` counts in use, or ``None`` when none are set (yet)."""
        if self.class_counts is None or not self._counts_ready:
            return None
        return self.class_counts.cpu().numpy().copy()

    def _refresh_weights(self) -> None:
        assert self.class_counts is not None  # only called when counts exist
        counts = self.class_counts.cpu().numpy()
        self._counts_ready = bool(np.all(counts >= 0))
        if self._counts_ready:
            weights = class_balanced_weights(counts, self.beta)
            self.class_weight = torch.as_tensor(weights, dtype=torch.float32,
                                                device=self.class_counts.device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # mmengine's load_checkpoint calls this method directly (not load_state_dict), so the
        # weights derived from the restored counts are refreshed here.
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.class_counts is not None:
            self._refresh_weights()

    def class_weights(self) -> Tensor | None:
        """``float32[C]`` per-class weights in use, or ``None`` for unweighted classes.

        Raises:
            ValueError: with ``class_counts='auto'`` when no counts have arrived.
        """
        if self.class_counts is not None and not self._counts_ready:
            raise ValueError(
                f"{type(self).__name__}(class_counts='auto', num_classes={self.num_classes}) "
                "has no class counts: no training dataset supplied them. Add "
                "custom_hooks=[dict(type='ClassStatsHook')] to the config (training only) or "
                "give class_counts explicitly")
        return self.class_weight

    # -- reduction ---------------------------------------------------------------------------

    def _reduction(self, reduction_override: str | None) -> str:
        if reduction_override is None:
            return self.reduction
        _check_reduction(reduction_override, "reduction_override")
        return reduction_override

    def _check_columns(self, pred: Tensor, allowed: tuple[int, ...]) -> None:
        if pred.dim() != 2:
            raise ValueError(f"pred must be Tensor[N, C], got shape {tuple(pred.shape)}")
        if self.num_classes is None or pred.shape[1] in allowed:
            return
        name = type(self).__name__
        message = (f"pred has {pred.shape[1]} columns (the head's classifier outputs) but {name} "
                   f"has num_classes={self.num_classes} (expected {allowed})")
        if self.use_sigmoid and pred.shape[1] == self.num_classes + 1:
            # mmdet's dense heads size their classifier from loss_cls.get('use_sigmoid', False),
            # the config dict, not from this module's default.
            message += (": the head built a softmax classifier with a background column. "
                        "mmdet's heads read use_sigmoid from the loss config, where it defaults "
                        f"to False: write loss_cls=dict(type='{name}', use_sigmoid=True, ...)")
        else:
            message += ": the head's num_classes and the loss's num_classes differ"
        raise ValueError(message)

    @staticmethod
    def _reduce(loss: Tensor, weight: Tensor | None, reduction: str,
                avg_factor: float | None, numel: int) -> Tensor:
        """mmdet's ``weight_reduce_loss``, except that the mean of an empty input is 0."""
        if reduction == "mean" and avg_factor is None:
            if weight is not None:
                loss = loss * weight
            return loss.sum() / max(numel, 1)
        return weight_reduce_loss(loss, weight, reduction, avg_factor)

    def extra_repr(self) -> str:
        counts = "auto" if self.counts_from_dataset else self.class_counts is not None
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


def _check_label_range(module: _ClassWeightedLoss, pred: Tensor, target: Tensor) -> None:
    """Raise if an integer label does not index a column of ``pred`` (``[0, K)``).

    One reduction (``aminmax``) and one device-to-host copy per call, on any device; wrong
    shapes and dtypes are left to the functional core, which names them.
    """
    if (target.dim() != 1 or pred.dim() != 2 or target.numel() == 0
            or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool):
        return
    low, high = torch.stack(torch.aminmax(target)).tolist()
    columns = pred.shape[1]
    if low < 0 or high >= columns:
        background = (", the last one the background" if module.num_classes is not None
                      and columns == module.num_classes + 1 else "")
        raise ValueError(
            f"target holds labels in [{low}, {high}], but {type(module).__name__} needs labels "
            f"in [0, {columns}): one per row, indexing the {columns} columns of pred"
            f"{background}")


def _softmax_forward(module: _ClassWeightedLoss, pred: Tensor, target: Tensor,
                     weight: Tensor | None, avg_factor: float | None,
                     reduction_override: str | None, gamma: float) -> Tensor:
    """Softmax focal / CE with mmdet's contract; a background column gets weight 1."""
    reduction = module._reduction(reduction_override)
    num_classes = module.num_classes
    module._check_columns(pred, (num_classes, num_classes + 1) if num_classes else ())
    _check_label_range(module, pred, target)
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
        num_classes: number of classes ``C``; required with ``class_counts='auto'``.
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
        num_classes: number of foreground classes ``C``; required with ``class_counts='auto'``.
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
        num_classes: number of foreground classes ``C``; required with ``class_counts='auto'``.
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
