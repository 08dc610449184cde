"""Functional cores of the gradient-guided long-tail losses: EQLv2 and the equalized focal loss.

Both losses treat each class ``j`` as a binary (sigmoid) classifier and re-weight it by the
gradients it has received so far: ``pos_grad[j]`` and ``neg_grad[j]`` are the magnitudes of the
gradients of the loss with respect to class ``j``'s logits, summed over positive (``t = 1``) and
negative (``t = 0``) samples of all earlier iterations. A rare class sees few positives and
many negatives, so its ratio ``pos_grad / neg_grad`` stays far below that of a frequent class.

The statistics are inputs here; keeping and updating them is the caller's job
(:mod:`mmimb.losses.gradient_guided` keeps them in buffers and sums them across ranks).
Each core returns the element-wise loss together with its element-wise gradient
``dloss[n, j] / dx[n, j]``, both computed in closed form in one pass; autograd's backward returns
exactly that gradient (times the incoming one), so statistics accumulated from it are the
gradients the logits receive. :func:`gradient_sums` turns a gradient into the two sums.

A class whose negative sum is still 0 (no statistics yet, in particular before the first
iteration) counts as balanced: both losses then reduce to their base loss (binary
cross-entropy for EQLv2, the focal loss for EFL), as the reference implementations do before
their first update.

Shape shorthand used below:
    N: number of samples (RoIs of an RoI head, anchors of a dense head)
    C: number of foreground classes
    K: number of logit columns: ``C + 1`` for EQLv2 (the last one is the background), ``C``
       for the equalized focal loss

Precision: half-precision logits are promoted to ``float32`` (``float64`` stays ``float64``);
the loss and the gradient sums come back in that dtype and in ``float64`` respectively, the
gradient with respect to ``pred`` in ``pred``'s dtype.

Non-finite logits are not checked (that would cost a device synchronisation). A NaN logit gives
a NaN loss and a NaN gradient for its element, which :func:`gradient_sums` leaves out of the
statistics. An infinite logit gives the limit of the formula: zero loss and zero gradient on the
side of its target, an infinite loss with a finite gradient on the wrong side.

Nothing here imports numpy, mmcv or mmdet.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812  (the universal alias)
from torch import Tensor

from mmimb.losses.functional import _check_labels, _check_pred, _compute_dtype, one_hot_targets


def _check_range(value: float, name: str, low: float, high: float = math.inf,
                 low_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and ``low <= value <= high``
    (``low < value`` if ``low_open``)."""
    above = value > low if low_open else value >= low
    if not (above and value <= high and math.isfinite(value)):  # also rejects NaN
        bracket = "(" if low_open else "["
        upper = "inf)" if high == math.inf else f"{high}]"
        raise ValueError(f"{name} must be finite and lie in {bracket}{low}, {upper}, got {value}")


def check_eqlv2_args(gamma: float, mu: float, alpha: float) -> None:
    """Raise ``ValueError`` unless ``gamma > 0``, ``mu >= 0`` and ``alpha >= 0`` (all finite)."""
    _check_range(gamma, "gamma", 0.0, low_open=True)
    _check_range(mu, "mu", 0.0)
    _check_range(alpha, "alpha", 0.0)


def check_efl_args(gamma_b: float, scale_factor: float, alpha: float | None) -> None:
    """Raise ``ValueError`` unless ``gamma_b > 0``, ``scale_factor >= 0`` (both finite) and
    ``alpha`` is ``None`` or in ``[0, 1]``."""
    _check_range(gamma_b, "gamma_b", 0.0, low_open=True)
    _check_range(scale_factor, "scale_factor", 0.0)
    if alpha is not None:
        _check_range(alpha, "alpha", 0.0, 1.0)


def _check_statistics(pos_grad: Tensor, neg_grad: Tensor, num_classes: int) -> None:
    for name, stat in (("pos_grad", pos_grad), ("neg_grad", neg_grad)):
        if not isinstance(stat, Tensor) or stat.shape != (num_classes,):
            shape = tuple(stat.shape) if isinstance(stat, Tensor) else type(stat).__name__
            raise ValueError(f"{name} must be a Tensor[C] with C={num_classes}, got {shape}")


def gradient_ratio(pos_grad: Tensor, neg_grad: Tensor) -> Tensor:
    """``pos_grad / neg_grad`` per class, ``+inf`` where ``neg_grad == 0`` (nothing seen yet).

    The reference implementations divide by ``neg_grad + 1e-10`` (no difference unless
    ``neg_grad`` is negligible) and special-case the time before their first update to
    "balanced", which ``+inf`` gives here for every class without statistics.

    Args:
        pos_grad: ``Tensor[C]`` accumulated positive gradient magnitudes, ``>= 0``.
        neg_grad: ``Tensor[C]`` accumulated negative gradient magnitudes, ``>= 0``.

    Returns:
        ``Tensor[C]`` in the statistics' dtype.
    """
    return torch.where(neg_grad > 0, pos_grad / neg_grad, math.inf)


def eqlv2_class_weights(pos_grad: Tensor, neg_grad: Tensor, gamma: float = 12.0,
                        mu: float = 0.8, alpha: float = 4.0) -> tuple[Tensor, Tensor]:
    """EQLv2's per-class weights of positive and negative samples (Tan et al., CVPR 2021).

    With the accumulated gradient ratio ``g_j = pos_grad[j] / neg_grad[j]``::

        f(g)     = 1 / (1 + exp(-gamma * (g - mu)))
        q_j      = f(g_j)                   # weight of the negatives of class j
        r_j      = 1 + alpha * (1 - q_j)    # weight of the positives of class j

    A balanced class (``g_j >= mu`` by a margin; also ``neg_grad[j] == 0``) gets
    ``q_j = r_j = 1``; a rare class (``g_j`` near 0) gets its negatives suppressed to
    ``f(0) = 6.8e-5`` and its positives raised towards ``1 + alpha``.

    Args:
        pos_grad: ``Tensor[C]`` accumulated positive gradients.
        neg_grad: ``Tensor[C]`` accumulated negative gradients.
        gamma: steepness of the mapping, ``> 0`` (paper: 12).
        mu: centre of the mapping, ``>= 0`` (paper: 0.8).
        alpha: extra weight of the positives, ``>= 0`` (paper: 4).

    Returns:
        ``(pos_weight, neg_weight)``, two ``Tensor[C]`` in the statistics' dtype.

    Raises:
        ValueError: on a hyper-parameter outside its range.
    """
    check_eqlv2_args(gamma, mu, alpha)
    neg_weight = torch.sigmoid(gamma * (gradient_ratio(pos_grad, neg_grad) - mu))
    return 1 + alpha * (1 - neg_weight), neg_weight


def efl_focusing_factors(pos_grad: Tensor, neg_grad: Tensor, gamma_b: float = 2.0,
                         scale_factor: float = 8.0) -> Tensor:
    """The equalized focal loss's per-class focusing factor (Li et al., CVPR 2022).

    ``gamma_j = gamma_b + s * (1 - g_j)`` with ``g_j = clamp(pos_grad[j] / neg_grad[j], 0, 1)``
    (1 while ``neg_grad[j] == 0``): a balanced class keeps the focal loss's ``gamma_b``, the
    rarest approach ``gamma_b + s``.

    Args:
        pos_grad: ``Tensor[C]`` accumulated positive gradients.
        neg_grad: ``Tensor[C]`` accumulated negative gradients.
        gamma_b: the focusing factor of a balanced class, ``> 0`` (paper: 2).
        scale_factor: ``s``, the range of the focusing factors, ``>= 0`` (paper: 8).

    Returns:
        ``Tensor[C]`` in the statistics' dtype.

    Raises:
        ValueError: on a hyper-parameter outside its range.
    """
    check_efl_args(gamma_b, scale_factor, None)
    balance = gradient_ratio(pos_grad, neg_grad).clamp(0.0, 1.0)
    return gamma_b + scale_factor * (1 - balance)


class _ClosedFormGradient(torch.autograd.Function):
    """Attaches a precomputed element-wise loss to ``pred``; backward returns ``grad * dL``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, pred: Tensor, loss: Tensor,
                grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.pred_dtype = pred.dtype  # type: ignore[attr-defined]
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad_loss: Tensor) -> tuple[Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return (grad * grad_loss.to(grad.dtype)).to(ctx.pred_dtype), None, None  # type: ignore[attr-defined]


def _signed(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Logits in the compute dtype, and ``z = x`` for positives, ``-x`` for negatives."""
    x = pred.detach().to(_compute_dtype(pred))
    return x, torch.where(target.bool(), x, -x)


def equalization_loss_v2(pred: Tensor, labels: Tensor, pos_grad: Tensor, neg_grad: Tensor,
                         gamma: float = 12.0, mu: float = 0.8,
                         alpha: float = 4.0) -> tuple[Tensor, Tensor]:
    """Element-wise Equalization Loss v2 and its gradient (Tan et al., "Equalization Loss v2: A
    New Gradient Balance Approach for Long-tailed Object Detection", CVPR 2021).

    Sigmoid binary cross-entropy over the ``K = C + 1`` columns of an RoI head, the last column
    being the background ("objectness") classifier of the reference implementation
    (tztztztztz/eqlv2), with each foreground class's positives and negatives re-weighted by
    :func:`eqlv2_class_weights` of the statistics; the background column is weighted 1::

        t[n, j]    = 1 if labels[n] == j else 0            (labels[n] == C: background)
        w[n, j]    = r_j if t[n, j] else q_j               (w[n, C] = 1)
        loss[n, j] = w[n, j] * BCE(x[n, j], t[n, j])
        grad[n, j] = w[n, j] * (sigmoid(x[n, j]) - t[n, j])

    Labels outside ``[0, C]`` give an all-zero target row. The weights are constants (they are
    functions of the statistics, not of ``pred``).

    Args:
        pred: ``Tensor[N, C + 1]`` logits.
        labels: ``int Tensor[N]`` in ``[0, C]``; ``C`` is the background.
        pos_grad: ``Tensor[C]`` accumulated positive gradients of the foreground classes.
        neg_grad: ``Tensor[C]`` accumulated negative gradients.
        gamma: steepness of the weight mapping, ``> 0`` (paper: 12).
        mu: centre of the weight mapping, ``>= 0`` (paper: 0.8).
        alpha: extra weight of the positives, ``>= 0`` (paper: 4).

    Returns:
        ``(loss, grad)``: ``Tensor[N, C + 1]`` loss, differentiable with respect to ``pred``
        (its backward is ``grad``), and the detached ``Tensor[N, C + 1]`` gradient
        ``dloss[n, j] / dx[n, j]``, both in ``float32`` (``float64`` for ``float64`` logits).

    Raises:
        ValueError: on a wrong shape or a hyper-parameter outside its range.
    """
    _check_pred(pred)
    _check_labels(labels, pred.shape[0], "labels")
    num_classes = pred.shape[1] - 1
    if num_classes < 1:
        raise ValueError(f"pred must have C + 1 >= 2 columns (the last one the background), got "
                         f"{pred.shape[1]}")
    _check_statistics(pos_grad, neg_grad, num_classes)
    pos_w, neg_w = eqlv2_class_weights(pos_grad, neg_grad, gamma, mu, alpha)
    with torch.no_grad():
        target = one_hot_targets(labels, num_classes + 1, torch.bool)
        x, z = _signed(pred, target)
        one = x.new_ones(1)
        weight = torch.where(target, torch.cat([pos_w.to(x.dtype), one]),
                             torch.cat([neg_w.to(x.dtype), one]))
        loss = weight * F.softplus(-z)
        # d softplus(-z) / dx = -sigmoid(-z) for positives (z = x), +sigmoid(-z) for negatives.
        grad = weight * torch.sigmoid(-z)
        grad = torch.where(target, -grad, grad)
    return _ClosedFormGradient.apply(pred, loss, grad), grad


def equalized_focal_loss(pred: Tensor, labels: Tensor, pos_grad: Tensor, neg_grad: Tensor,
                         gamma_b: float = 2.0, scale_factor: float = 8.0,
                         alpha: float | None = 0.25) -> tuple[Tensor, Tensor]:
    """Element-wise equalized focal loss and its gradient (Li et al., "Equalized Focal Loss for
    Dense Long-Tailed Object Detection", CVPR 2022).

    The sigmoid focal loss with a focusing factor ``gamma_j`` per class
    (:func:`efl_focusing_factors`) and the weighting factor ``gamma_j / gamma_b``, which keeps a
    rare class's loss from vanishing under its larger focusing factor. With ``p_t`` the
    probability of the target side, ``alpha_t = alpha`` for positives and ``1 - alpha`` for
    negatives (the reference implementation, ModelTC/EOD, keeps the focal loss's ``alpha``)::

        loss[n, j] = alpha_t * (gamma_j / gamma_b) * (1 - p_t) ** gamma_j * (-log p_t)

    Its closed-form gradient, with ``q = 1 - p_t``, ``c = alpha_t * gamma_j / gamma_b`` and
    ``s = +1`` for positives, ``-1`` for negatives, never divides by ``q``::

        grad[n, j] = -s * c * q ** gamma_j * (q + gamma_j * p_t * (-log p_t))

    ``scale_factor = 0`` (and any class before its first statistics) gives the focal loss of
    Lin et al., ICCV 2017, with ``gamma = gamma_b``.

    Args:
        pred: ``Tensor[N, C]`` logits.
        labels: ``int Tensor[N]``; ``C`` (or any value outside ``[0, C)``) is background.
        pos_grad: ``Tensor[C]`` accumulated positive gradients.
        neg_grad: ``Tensor[C]`` accumulated negative gradients.
        gamma_b: focusing factor of a balanced class, ``> 0`` (paper: 2).
        scale_factor: ``s``, range of the focusing factors, ``>= 0`` (paper: 8).
        alpha: positive-term weight in ``[0, 1]`` (paper: 0.25), or ``None`` for none.

    Returns:
        ``(loss, grad)``: ``Tensor[N, C]`` loss, differentiable with respect to ``pred`` (its
        backward is ``grad``), and the detached ``Tensor[N, C]`` gradient, both in ``float32``
        (``float64`` for ``float64`` logits).

    Raises:
        ValueError: on a wrong shape or a hyper-parameter outside its range.
    """
    _check_pred(pred)
    _check_labels(labels, pred.shape[0], "labels")
    _check_statistics(pos_grad, neg_grad, pred.shape[1])
    check_efl_args(gamma_b, scale_factor, alpha)
    gamma_j = efl_focusing_factors(pos_grad, neg_grad, gamma_b, scale_factor)
    with torch.no_grad():
        target = one_hot_targets(labels, pred.shape[1], torch.bool)
        x, z = _signed(pred, target)
        gamma = gamma_j.to(x.dtype)
        coef = gamma / gamma_b
        if alpha is not None:
            coef = coef * torch.where(target, x.new_tensor(alpha), x.new_tensor(1 - alpha))
        bce = F.softplus(-z)  # -log p_t
        q = torch.sigmoid(-z)  # 1 - p_t
        p_t = torch.sigmoid(z)
        modulated = coef * q.pow(gamma)
        loss = modulated * bce
        # p_t * bce -> 0 as p_t -> 0; written out so that z = -inf gives 0, not 0 * inf.
        entropy = torch.where(p_t > 0, p_t * bce, 0.0)
        grad = modulated * (q + gamma * entropy)
        grad = torch.where(target, -grad, grad)
    return _ClosedFormGradient.apply(pred, loss, grad), grad


def gradient_sums(grad: Tensor, labels: Tensor) -> Tensor:
    """Per-class sums of ``|grad|`` over positive and over negative samples.

    ``sums[0, j] = sum_n |grad[n, j]| [labels[n] == j]`` and ``sums[1, j]`` the same over
    ``labels[n] != j``, accumulated in ``float64``. Non-finite elements (from NaN logits) are
    left out, so that one diverged step, which mixed-precision training skips, does not turn the
    statistics into NaN for the rest of training.

    Args:
        grad: ``Tensor[N, C]`` element-wise gradients (sample weights already applied).
        labels: ``int Tensor[N]``; values outside ``[0, C)`` are negatives of every class.

    Returns:
        ``float64 Tensor[2, C]``: positive sums, then negative sums.

    Raises:
        ValueError: on a wrong shape.
    """
    _check_pred(grad, "grad")
    _check_labels(labels, grad.shape[0], "labels")
    magnitude = grad.detach().abs().nan_to_num(nan=0.0, posinf=0.0)
    target = one_hot_targets(labels, grad.shape[1], magnitude.dtype)
    pos = (magnitude * target).sum(0, dtype=torch.float64)
    neg = (magnitude * (1 - target)).sum(0, dtype=torch.float64)
    return torch.stack([pos, neg])
