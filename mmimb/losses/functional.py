"""Pure functional cores of mmimb's classification losses: torch only, one code path on any device.

Every function here takes logits and targets and returns the element-wise loss (or, for the fused
path, its weighted sum) without reduction; the registered modules in :mod:`mmimb.losses.modules`
add mmdet's reduction contract. Nothing here imports numpy, mmcv or mmdet.

Shape shorthand used below:
    N: number of samples (anchors of a dense head, RoIs of an RoI head)
    C: number of foreground classes
    K: number of softmax columns, ``C`` or ``C + 1`` when the last column is the background

Precision: half-precision logits (``float16``/``bfloat16``) are promoted to ``float32`` inside
each function, so logits of +-100 give finite losses and gradients. Losses are returned in
``float32`` (``float64`` when the logits are ``float64``); gradients come back in the logits'
dtype, as autograd requires.

Non-finite logits are not checked (that would cost a device synchronisation per call), and they
never give a silently finite wrong loss: a NaN logit gives a NaN loss (and a NaN sum). In the
fused path (:func:`sigmoid_focal_loss_sum`) an infinite logit gives the limit of the formula:
zero loss on the side of its target, an infinite loss (and NaN gradient) on the wrong side. The
general element-wise forms (:func:`sigmoid_focal_loss`, :func:`softmax_focal_loss`) give NaN
for any infinite logit, as ``F.binary_cross_entropy_with_logits`` and ``F.log_softmax`` do.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812  (the universal alias)
from torch import Tensor

#: Set this environment variable to ``1`` to run the fused sigmoid focal loss eagerly instead
#: of through ``torch.compile``.
DISABLE_COMPILE_ENV = "MMIMB_DISABLE_COMPILE"

_KernelFn = Callable[..., tuple[Tensor, Tensor]]


def _compute_dtype(pred: Tensor) -> torch.dtype:
    """``float32`` for half-precision and ``float32`` logits, ``float64`` for ``float64``."""
    return torch.promote_types(pred.dtype, torch.float32)


def _check_pred(pred: Tensor, name: str = "pred") -> None:
    if not isinstance(pred, Tensor) or not pred.is_floating_point() or pred.dim() != 2:
        shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f"{name} must be a floating-point Tensor[N, C], got {shape}")


def _check_labels(labels: Tensor, num_rows: int, name: str = "target") -> None:
    if (labels.dim() != 1 or labels.shape[0] != num_rows or labels.is_floating_point()
            or labels.is_complex() or labels.dtype == torch.bool):
        raise ValueError(
            f"{name} must be an integer Tensor[N] with N={num_rows}, got dtype {labels.dtype} "
            f"and shape {tuple(labels.shape)}")


def _class_vector(value: float | Tensor | None, num_classes: int, name: str,
                  like: Tensor) -> Tensor | None:
    """``value`` as a ``[C]`` tensor on ``like``'s device and dtype (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.shape != (num_classes,):
            raise ValueError(f"{name} must have shape ({num_classes},), got "
                             f"{tuple(value.shape)}")
        return value.to(device=like.device, dtype=like.dtype)
    return torch.full((num_classes,), float(value), device=like.device, dtype=like.dtype)


def _sample_weight(weight: Tensor | None, shape: tuple[int, int], like: Tensor) -> Tensor | None:
    """Per-sample ``[N]`` or per-element ``[N, C]`` weights, broadcastable to ``[N, C]``."""
    if weight is None:
        return None
    if weight.shape == shape:
        return weight.to(like.dtype)
    if weight.shape == shape[:1]:
        return weight.to(like.dtype)[:, None]
    raise ValueError(f"weight must have shape ({shape[0]},) or {shape}, got {tuple(weight.shape)}")


def one_hot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Binary ``[N, C]`` targets from integer labels; labels outside ``[0, C)`` are background.

    mmdet's sigmoid heads label background anchors with ``C`` (``num_classes``), which becomes
    an all-zero row here.
    """
    classes = torch.arange(num_classes, device=labels.device)
    return (labels[:, None] == classes).to(dtype)


def sigmoid_focal_loss(pred: Tensor, target: Tensor, alpha: float | Tensor | None = 0.25,
                       gamma: float = 2.0, class_weight: Tensor | None = None) -> Tensor:
    """Element-wise sigmoid focal loss with per-class ``alpha`` and per-class weights.

    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. With ``p = sigmoid(x)``,
    ``q = t + p - 2 p t`` (``1 - p_t`` for binary ``t``) and ``bce = -t log p - (1-t) log(1-p)``::

        loss[n, c] = w[c] * (alpha[c] t + (1 - alpha[c]) (1 - t)) * q ** gamma * bce

    ``w`` scales *both* terms of class ``c``'s binary loss (unlike a ``pos_weight``). Used with
    class-balanced weights ``w`` this is the class-balanced focal loss of Cui et al., CVPR 2019
    (per-class weighting of each class's binary classifier; in detection most samples are
    background and have no class of their own to weight them by). ``gamma = 0`` and
    ``alpha = None`` give the binary cross-entropy.

    This is the general, autograd-differentiated form: it accepts soft targets, and equals
    ``torchvision.ops.sigmoid_focal_loss`` and mmdet's ``py_sigmoid_focal_loss`` for scalar
    ``alpha``. :func:`sigmoid_focal_loss_sum` is the fused fast path for integer labels.

    Args:
        pred: ``Tensor[N, C]`` logits.
        target: ``int Tensor[N]`` labels (``C`` or any value outside ``[0, C)`` is background)
            or ``Tensor[N, C]`` binary or soft targets in ``[0, 1]``.
        alpha: weight of the positive term, a scalar or ``Tensor[C]`` in ``[0, 1]``; the
            negative term gets ``1 - alpha``. ``None`` switches the balancing off (torchvision's
            ``alpha=-1``).
        gamma: focusing parameter, ``>= 0``.
        class_weight: ``Tensor[C]`` weight of each class, or ``None``.

    Returns:
        ``Tensor[N, C]`` loss in ``float32`` (``float64`` for ``float64`` logits).

    Raises:
        ValueError: on a wrong shape, or ``gamma < 0``.
    """
    _check_pred(pred)
    _check_gamma(gamma)
    num_rows, num_classes = pred.shape
    x = pred.to(_compute_dtype(pred))
    if target.dim() == 1:
        _check_labels(target, num_rows)
        t = one_hot_targets(target, num_classes, x.dtype)
    elif target.shape == pred.shape:
        t = target.to(x.dtype)
    else:
        raise ValueError(f"target must have shape ({num_rows},) or {tuple(pred.shape)}, got "
                         f"{tuple(target.shape)}")
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    if gamma != 0:
        p = torch.sigmoid(x)
        # Clamped so that 0 < gamma < 1 does not give 0 * inf = NaN gradients where q == 0.
        q = (t + p - 2 * p * t).clamp_min(torch.finfo(x.dtype).tiny)
        loss = loss * q.pow(gamma)
    alpha_vec = _class_vector(alpha, num_classes, "alpha", x)
    if alpha_vec is not None:
        loss = loss * (alpha_vec * t + (1 - alpha_vec) * (1 - t))
    weight_vec = _class_vector(class_weight, num_classes, "class_weight", x)
    if weight_vec is not None:
        loss = loss * weight_vec
    return loss


def _check_gamma(gamma: float) -> None:
    if not gamma >= 0:  # also rejects NaN
        raise ValueError(f"gamma must be >= 0, got {gamma}")


def _focal_sum_and_grad(pred: Tensor, labels: Tensor, alpha: Tensor | None, class_weight: Tensor |
                        None, weight: Tensor | None, gamma: float) -> tuple[Tensor, Tensor]:
    """Row sums of the weighted binary-target focal loss and its gradient, fused when compiled.

    With the signed logit ``z = x`` for the target class and ``z = -x`` otherwise,
    ``q = sigmoid(-z) = 1 - p_t`` and ``bce = softplus(-z) = -log p_t``; the loss
    ``L = c * q**gamma * bce`` (``c`` the product of the alpha and weight factors) has the
    closed-form derivative ``dL/dz = -c * q**gamma * (q + gamma * (1 - q) * bce)``, which never
    divides by ``q``, so it is finite for any finite logit and any ``gamma >= 0``. Eagerly this
    is about a dozen element-wise passes (against about thirty for autograd through the
    textbook formula); compiled, one.

    Returns:
        ``(row_totals, grad)``: ``float64[N]`` sums of ``L`` over classes, and ``dL/dx`` as
        ``Tensor[N, C]`` in the compute dtype (``float32``, or ``float64``). Row sums rather than
        the scalar, because inductor fuses a reduction over the inner dimension into the same
        loop as the gradient, but computes a full reduction in a second pass over the inputs.
    """
    x = pred.to(_compute_dtype(pred))
    is_pos = labels[:, None] == torch.arange(x.shape[1], device=x.device)
    minus_z = torch.where(is_pos, -x, x)
    # softplus is linear beyond 20: relative error below 1e-9, immaterial even in float64.
    bce = F.softplus(minus_z)
    q = torch.sigmoid(minus_z)
    coef = q.pow(gamma)
    if alpha is not None:
        coef = coef * torch.where(is_pos, alpha, 1 - alpha)
    if class_weight is not None:
        coef = coef * class_weight
    if weight is not None:
        coef = coef * weight
    row_totals = (coef * bce).sum(dim=1, dtype=torch.float64)
    grad_minus_z = torch.addcmul(q, 1 - q, bce, value=gamma) * coef  # = dL/d(-z)
    return row_totals, torch.where(is_pos, -grad_minus_z, grad_minus_z)


_compiled_kernel: _KernelFn | None = None
_compile_failed = False


def compile_enabled(use_compile: bool | None = None) -> bool:
    """Whether the fused path runs through ``torch.compile``.

    ``use_compile=None`` means "yes unless the environment variable ``MMIMB_DISABLE_COMPILE=1``
    is set"; ``False`` always runs eagerly. Compilation is also skipped after it failed once (a
    warning says why), and inside an outer ``torch.compile`` trace, which fuses the eager form
    itself.
    """
    if use_compile is False or _compile_failed or torch.compiler.is_compiling():
        return False
    return os.environ.get(DISABLE_COMPILE_ENV, "0") not in ("1", "true", "True")


def _kernel(use_compile: bool | None, pred: Tensor) -> _KernelFn:
    global _compiled_kernel
    # Shapes with a dimension below 2 would be specialised into extra compiled graphs.
    if not compile_enabled(use_compile) or min(pred.shape) < 2:
        return _focal_sum_and_grad
    if _compiled_kernel is None:
        _compiled_kernel = torch.compile(_focal_sum_and_grad, dynamic=True)
    return _compiled_kernel


def _run_kernel(use_compile: bool | None, pred: Tensor, labels: Tensor, alpha: Tensor | None,
                class_weight: Tensor | None, weight: Tensor | None,
                gamma: float) -> tuple[Tensor, Tensor]:
    global _compile_failed
    args = (pred, labels, alpha, class_weight, weight, gamma)
    kernel = _kernel(use_compile, pred)
    if kernel is _focal_sum_and_grad:
        return kernel(*args)
    try:
        return kernel(*args)
    except Exception as err:  # any compiler failure (no C++ compiler, no triton) falls back
        _compile_failed = True
        warnings.warn(f"torch.compile of the fused sigmoid focal loss failed ({err!r}); "
                      "running it eagerly from now on", RuntimeWarning, stacklevel=3)
        return _focal_sum_and_grad(*args)


class _SigmoidFocalSum(torch.autograd.Function):
    """Autograd wrapper: the gradient is computed with the loss and saved for backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, pred: Tensor, labels: Tensor,
                alpha: Tensor | None, class_weight: Tensor | None, weight: Tensor | None,
                gamma: float, use_compile: bool | None) -> Tensor:
        row_totals, grad = _run_kernel(use_compile, pred, labels, alpha, class_weight, weight,
                                       gamma)
        # Saved in the compute dtype: scaling half-precision gradients by 1 / avg_factor only
        # after the cast could flush them to zero.
        ctx.save_for_backward(grad)
        ctx.pred_dtype = pred.dtype  # type: ignore[attr-defined]
        return row_totals.sum().to(grad.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad_total: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_pred = (grad * grad_total.to(grad.dtype)).to(ctx.pred_dtype)  # type: ignore[attr-defined]
        return grad_pred, None, None, None, None, None, None


def sigmoid_focal_loss_sum(pred: Tensor, labels: Tensor, alpha: float | Tensor | None = 0.25,
                           gamma: float = 2.0, class_weight: Tensor | None = None,
                           weight: Tensor | None = None,
                           use_compile: bool | None = None) -> Tensor:
    """Fused ``sum(weight * sigmoid_focal_loss(pred, labels, ...))`` with a closed-form backward.

    Same value as ``(sigmoid_focal_loss(pred, labels, alpha, gamma, class_weight) * weight).sum()``
    but the loss and its gradient are computed together (one fused pass when compiled), and
    backward only scales the saved gradient. It is differentiable with respect to ``pred`` only;
    ``alpha``, ``class_weight`` and ``weight`` are treated as constants.

    Compiled with ``torch.compile`` (see :func:`compile_enabled`) with dynamic shapes; the first
    call per combination of optional arguments compiles (about 10-20 s on a 2-core CPU, then
    cached on disk by inductor). The eager fallback evaluates the same formula, so the two
    agree to float rounding.

    Args:
        pred: ``Tensor[N, C]`` logits.
        labels: ``int Tensor[N]``; ``C`` (or any value outside ``[0, C)``) is background.
        alpha: scalar or ``Tensor[C]`` in ``[0, 1]``, or ``None`` for no balancing.
        gamma: focusing parameter, ``>= 0``.
        class_weight: ``Tensor[C]`` per-class weights, or ``None``.
        weight: ``Tensor[N]`` per-sample or ``Tensor[N, C]`` per-element weights, or ``None``.
        use_compile: ``None`` (default: compile unless ``MMIMB_DISABLE_COMPILE=1``), ``True``
            or ``False``.

    Returns:
        Scalar ``float32`` (``float64`` for ``float64`` logits) tensor.

    Raises:
        ValueError: on a wrong shape, or ``gamma < 0``.
    """
    _check_pred(pred)
    _check_labels(labels, pred.shape[0], "labels")
    _check_gamma(gamma)
    like = torch.empty((), dtype=_compute_dtype(pred), device=pred.device)
    num_classes = pred.shape[1]
    return _SigmoidFocalSum.apply(
        pred, labels, _class_vector(alpha, num_classes, "alpha", like),
        _class_vector(class_weight, num_classes, "class_weight", like),
        _sample_weight(weight, (pred.shape[0], pred.shape[1]), like), float(gamma), use_compile)


def softmax_focal_loss(pred: Tensor, labels: Tensor, gamma: float = 2.0,
                       class_weight: Tensor | None = None) -> Tensor:
    """Per-sample softmax focal loss, for heads that predict a background column.

    Lin et al., ICCV 2017, softmax form: with ``p_t = softmax(x)[y]``::

        loss[n] = w[y] * (1 - p_t) ** gamma * (-log p_t)

    ``gamma = 0`` gives the (weighted) softmax cross-entropy, ``F.cross_entropy(pred, labels,
    weight=w, reduction='none')``, in value and gradient. The per-class weight ``w`` plays the
    role of the per-class ``alpha`` of the softmax form; class-balanced weights make it the
    class-balanced softmax focal loss of Cui et al., CVPR 2019.

    Args:
        pred: ``Tensor[N, K]`` logits, ``K = C + 1`` when the last column is the background
            (mmdet's RoI heads).
        labels: ``int Tensor[N]`` with values in ``[0, K)``.
        gamma: focusing parameter, ``>= 0``.
        class_weight: ``Tensor[K]`` weight of each column's class, or ``None``.

    Returns:
        ``Tensor[N]`` loss in ``float32`` (``float64`` for ``float64`` logits).

    Raises:
        ValueError: on a wrong shape, or ``gamma < 0``.
    """
    _check_pred(pred)
    _check_labels(labels, pred.shape[0], "labels")
    _check_gamma(gamma)
    logp = F.log_softmax(pred.to(_compute_dtype(pred)), dim=1)
    weight_vec = _class_vector(class_weight, pred.shape[1], "class_weight", logp)
    logp_t = logp.gather(1, labels[:, None]).squeeze(1)
    loss = -logp_t
    if gamma != 0:
        # -expm1(log p) is 1 - p without cancellation; clamped as in sigmoid_focal_loss.
        one_minus_p = (-torch.expm1(logp_t)).clamp_min(torch.finfo(logp.dtype).tiny)
        loss = loss * one_minus_p.pow(gamma)
    if weight_vec is not None:
        loss = loss * weight_vec[labels]
    return loss
