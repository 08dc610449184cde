"""Functional cores of the prior-adjusted RoI losses: balanced softmax / logit adjustment, ECM.

Torch only, one code path on any device. The loss functions return the element-wise loss
without reduction; :mod:`mmimb.losses.logit_adjust` adds mmdet's reduction contract and the
head protocol. The per-class terms (adjustments, margins, weights) are computed once from the
class counts by the functions below and passed in.

Shape shorthand used below:
    N: number of RoIs
    C: number of foreground classes
    K: number of classifier outputs, ``C + 1``: the foreground classes, then the background

Precision: half-precision logits are promoted to ``float32``; ``float64`` logits stay
``float64``, and so does the loss. Counts are used in the dtype given (pass ``float64`` for
exact margins).

Non-finite logits are not checked (that would cost a device synchronisation per call) and
never give a silently wrong loss: a NaN or ``+inf`` logit gives NaN in its row of the softmax
losses (as ``F.cross_entropy``), and ``-inf`` the limit (that class has probability 0, a
finite loss, or ``+inf`` for the labelled class); NaN or ``+inf`` in its element of the ECM
loss (as
``F.binary_cross_entropy_with_logits``: NaN, except ``+inf`` for an infinite logit on the side
opposite its target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812  (the universal alias)
from torch import Tensor


def _compute_dtype(pred: Tensor) -> torch.dtype:
    return torch.promote_types(pred.dtype, torch.float32)


def _check_pred(pred: Tensor, columns: int | None = None) -> None:
    if not isinstance(pred, Tensor) or not pred.is_floating_point() or pred.dim() != 2:
        shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f"pred must be a floating-point Tensor[N, K], got {shape}")
    if columns is not None and pred.shape[1] != columns:
        raise ValueError(f"pred has {pred.shape[1]} columns but the per-class terms have "
                         f"{columns}")


def _check_labels(labels: Tensor, num_rows: int) -> None:
    if (labels.dim() != 1 or labels.shape[0] != num_rows or labels.is_floating_point()
            or labels.is_complex() or labels.dtype == torch.bool):
        raise ValueError(f"labels must be an integer Tensor[N] with N={num_rows}, got dtype "
                         f"{labels.dtype} and shape {tuple(labels.shape)}")


def _check_counts(counts: Tensor) -> Tensor:
    if not isinstance(counts, Tensor) or counts.dim() != 1 or counts.numel() == 0:
        shape = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
        raise ValueError(f"counts must be a non-empty Tensor[C], got {shape}")
    # A class without training samples counts as one: its log prior stays finite.
    return counts.to(torch.promote_types(counts.dtype, torch.float32)).clamp_min(1)


def logit_adjustment(counts: Tensor, tau: float = 1.0) -> Tensor:
    """Per-column additive logit adjustment of an RoI classifier, background column last.

    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (eq. 10/11) adjust the
    logit of class ``c`` by ``tau * log pi_c``, ``pi`` the training label prior; ``tau = 1`` in
    the loss is the balanced softmax of Ren et al., "Balanced Meta-Softmax for Long-Tailed
    Visual Recognition", NeurIPS 2020 (``softmax(x + log n)``). Here::

        a[c] = tau * log(C * n[c] / sum_k n[k])    for a foreground class c < C
        a[C] = 0                                   for the background column

    Background: an RoI head's classifier also predicts background, whose training frequency
    is set by the RoI sampler, not by the class counts. Logit adjustment is Bayes-consistent
    for the balanced error of the target prior ``P_bal`` when the adjustment is
    ``tau * log(P_train(y) / P_bal(y))``. Taking as target the training prior with the
    foreground classes made uniform and the background's share unchanged,
    ``P_bal(c) = (1 - b) / C``, ``P_bal(bg) = b``, against ``P_train(c) = (1 - b) n_c / sum n``
    and ``P_train(bg) = b``, gives exactly ``a`` above: whatever the background fraction
    ``b``, the foreground classes are balanced among themselves and the foreground-background
    trade-off learnt by the plain head is left alone (the background is not adjusted, as
    NorCal, Pan et al., NeurIPS 2021, found necessary for detection). Equal counts give
    ``a = 0``, plain cross-entropy. For ``tau = 1`` the loss is Ren et al.'s
    ``-log(n_y e^{x_y} / sum_k n_k e^{x_k})`` with the background counted as an average
    foreground class, ``n_bg = sum_c n_c / C`` (the softmax is invariant to a common shift).

    A class with zero count is counted as one, so its adjustment stays finite (with
    ``log 0`` a class never seen in training would always win the post-hoc softmax).

    Args:
        counts: ``Tensor[C]`` training counts of the foreground classes (instances, by default).
        tau: scale of the adjustment, ``>= 0``; ``0`` gives no adjustment.

    Returns:
        ``Tensor[C + 1]`` adjustment, in ``counts``' floating dtype (at least ``float32``).

    Raises:
        ValueError: if ``counts`` is not a non-empty 1-D tensor or ``tau < 0``.
    """
    n = _check_counts(counts)
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    foreground = tau * torch.log(n * (len(n) / n.sum()))
    return torch.cat([foreground, foreground.new_zeros(1)])


def logit_adjusted_cross_entropy(pred: Tensor, labels: Tensor,
                                 adjustment: Tensor | None = None) -> Tensor:
    """Per-RoI softmax cross-entropy of adjusted logits, ``-log softmax(x + a)[y]``.

    With ``a = logit_adjustment(counts, tau)`` this is the logit-adjusted loss of Menon et al.
    (ICLR 2021), and for ``tau = 1`` the balanced softmax of Ren et al. (NeurIPS 2020); with
    ``a = None`` (or zeros) it equals ``F.cross_entropy(pred, labels, reduction='none')`` in
    value and gradient.

    Args:
        pred: ``Tensor[N, K]`` logits.
        labels: ``int Tensor[N]`` in ``[0, K)``, ``C`` the background.
        adjustment: ``Tensor[K]`` added to every row, or ``None``.

    Returns:
        ``Tensor[N]`` loss in ``float32`` (``float64`` for ``float64`` logits).

    Raises:
        ValueError: on a wrong shape.
    """
    _check_pred(pred, None if adjustment is None else len(adjustment))
    _check_labels(labels, pred.shape[0])
    x = pred.to(_compute_dtype(pred))
    if adjustment is not None:
        x = x + adjustment.to(device=x.device, dtype=x.dtype)
    return F.cross_entropy(x, labels, reduction="none")


def posthoc_adjusted_softmax(pred: Tensor, adjustment: Tensor) -> Tensor:
    """Scores of a plain softmax classifier with the logit adjustment removed at inference.

    Menon et al., ICLR 2021, post-hoc correction (eq. 9): ``softmax(x - a)``, ``a`` from
    :func:`logit_adjustment`. A model trained with plain cross-entropy estimates the training
    prior-weighted posterior; subtracting ``tau * log prior`` re-weights it towards the
    balanced one. ``a = 0`` gives ``softmax(x)``.

    Args:
        pred: ``Tensor[N, K]`` logits.
        adjustment: ``Tensor[K]``.

    Returns:
        ``Tensor[N, K]`` probabilities in ``float32`` (``float64`` for ``float64`` logits).

    Raises:
        ValueError: on a wrong shape.
    """
    _check_pred(pred, len(adjustment))
    x = pred.to(_compute_dtype(pred))
    return F.softmax(x - adjustment.to(device=x.device, dtype=x.dtype), dim=1)


def effective_class_margins(counts: Tensor, bg_fg_ratio: float = 6.3313) -> tuple[Tensor, Tensor]:
    """Margins and weights of the ECM loss for ``C`` foreground classes and the background.

    Cho and Kraehenbuehl, "Long-tail Detection with Effective Class-Margins", ECCV 2022, as in
    their reference implementation (github.com/janghyuncho/ECM-Loss). With ``n[k]`` the count
    of column ``k`` (foreground image counts, then ``n[C] = bg_fg_ratio * sum_c n[c]`` for the
    background) and ``m[k] = sum_j n[j] - n[k]`` its negatives, the positive and negative
    margins are ``m+[k] = log(1 + (n[k]/m[k])**(1/4))`` and ``m-[k] = log(1 + (m[k]/n[k])**(1/4))``
    (the reference's ``-log(m**¼ / (n**¼ + m**¼))`` and ``-log(n**¼ / (n**¼ + m**¼))``),
    and the class weight (their Theorem 2) is ``w[k] = a log((1 + a) / a)``, ``a = m[k] / n[k]``.
    The loss only needs the difference, returned as the margin::

        margin[k] = m+[k] - m-[k] = (1/4) log(n[k] / m[k])

    A class with zero count is counted as one (the reference's ``log 0`` would make its
    margin and weight infinite or NaN).

    Args:
        counts: ``Tensor[C]`` training counts of the foreground classes (images containing
            the class, as in the reference, which reads LVIS's ``image_count``).
        bg_fg_ratio: background count over the total foreground count, ``> 0``; the default
            is the reference's empirical ratio for Mask R-CNN on LVIS (named ``fg_bg_ratio``
            there).

    Returns:
        ``(margin, weight)``, each ``Tensor[C + 1]`` in ``counts``' floating dtype (at least
        ``float32``).

    Raises:
        ValueError: if ``counts`` is not a non-empty 1-D tensor or ``bg_fg_ratio <= 0``.
    """
    n_fg = _check_counts(counts)
    if not bg_fg_ratio > 0:
        raise ValueError(f"bg_fg_ratio must be > 0, got {bg_fg_ratio}")
    n = torch.cat([n_fg, n_fg.sum()[None] * bg_fg_ratio])
    negatives = n.sum() - n
    a = negatives / n
    return 0.25 * torch.log(n / negatives), a * torch.log1p(1 / a)


def ecm_loss(pred: Tensor, labels: Tensor, margin: Tensor, class_weight: Tensor) -> Tensor:
    """Element-wise effective class-margin loss of an RoI classifier with a background column.

    Cho and Kraehenbuehl, ECCV 2022: every column ``k`` (background included) is a binary
    classifier whose positive and negative logits are ``x + m+`` and ``-x + m-``::

        p[n, k] = exp(x + m+) / (exp(x + m+) + exp(-x + m-)) = sigmoid(2 x[n, k] + margin[k])
        loss[n, k] = -w[k] (t[n, k] log p[n, k] + (1 - t[n, k]) log(1 - p[n, k]))

    with ``t`` the one-hot target over the ``K`` columns (the background RoIs are positives of
    the background column). The reference divides the sum by the number of RoIs.

    Args:
        pred: ``Tensor[N, K]`` logits.
        labels: ``int Tensor[N]`` in ``[0, K)``, ``K - 1`` the background.
        margin: ``Tensor[K]`` from :func:`effective_class_margins`.
        class_weight: ``Tensor[K]`` from :func:`effective_class_margins`.

    Returns:
        ``Tensor[N, K]`` loss in ``float32`` (``float64`` for ``float64`` logits).

    Raises:
        ValueError: on a wrong shape.
    """
    _check_pred(pred, len(margin))
    _check_labels(labels, pred.shape[0])
    if class_weight.shape != margin.shape:
        raise ValueError(f"class_weight must have shape {tuple(margin.shape)}, got "
                         f"{tuple(class_weight.shape)}")
    x = pred.to(_compute_dtype(pred))
    target = (labels[:, None] == torch.arange(x.shape[1], device=x.device)).to(x.dtype)
    z = 2 * x + margin.to(device=x.device, dtype=x.dtype)
    loss = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    return loss * class_weight.to(device=x.device, dtype=x.dtype)


def ecm_scores(pred: Tensor) -> Tensor:
    """Detection scores of an ECM classifier, as the reference's ``get_activation``.

    ``s = sigmoid(x)`` for every column (margins are a training device and are dropped at
    inference); each foreground score is then multiplied by ``1 - s[bg]``, the probability
    that the RoI is not background. The background column is returned as is (mmdet's NMS
    drops it).

    Args:
        pred: ``Tensor[N, K]`` logits, the last column the background.

    Returns:
        ``Tensor[N, K]`` scores in ``[0, 1]``.
    """
    _check_pred(pred)
    scores = pred.to(_compute_dtype(pred)).sigmoid()
    foreground = scores[:, :-1] * (1 - scores[:, -1:])
    return torch.cat([foreground, scores[:, -1:]], dim=1)
