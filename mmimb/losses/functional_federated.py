"""Functional core of the federated loss: class sampling and the masked sigmoid cross-entropy.

Zhou, Koltun and Kraehenbuehl, "Probabilistic two-stage detection", arXiv 2103.07461, 2021,
as in detectron2's ``FastRCNNOutputLayers.get_fed_loss_classes`` and CenterNet2's
``get_fed_loss_inds``: each iteration, the sigmoid cross-entropy of an RoI classifier is
computed over the classes present in the batch plus negative classes sampled without
replacement with probability proportional to ``image_count ** 0.5``, up to 50 classes; the
other classes get no gradient in that iteration. (LVIS is federated: an image is exhaustively
annotated for a few classes only, and a class absent from a batch says little about it.)

Torch only, one code path on any device. Sampling draws from ``torch.multinomial`` (the global
generator of the device, or the ``generator`` given), as the reference does.

Shape shorthand used below:
    N: number of RoIs
    C: number of foreground classes (the classifier's outputs; labels equal to ``C`` are
       background)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812  (the universal alias)
from torch import Tensor


def federated_class_weights(counts: Tensor, power: float = 0.5) -> Tensor:
    """Sampling weights of the negative classes: ``max(n_c, 1) ** power``.

    Args:
        counts: ``Tensor[C]`` training image counts per class (LVIS ``image_count``).
        power: exponent, ``>= 0``; ``0.5`` in the paper, ``0`` samples uniformly.

    Returns:
        ``Tensor[C]`` positive weights (at least ``float32``). A class without training
        images is weighted as one with one image: the reference's weight 0 would never
        sample it, leaving its logit untrained, at a score of ``sigmoid(0) = 0.5`` for every
        RoI at inference.

    Raises:
        ValueError: if ``counts`` is not a non-empty 1-D tensor or ``power < 0``.
    """
    if not isinstance(counts, Tensor) or counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty Tensor[C], got {counts!r}")
    if not power >= 0:
        raise ValueError(f"power must be >= 0, got {power}")
    n = counts.to(torch.promote_types(counts.dtype, torch.float32))
    return n.clamp_min(1).pow(power)


def sample_federated_classes(labels: Tensor, weights: Tensor, num_sample_classes: int = 50,
                             generator: torch.Generator | None = None) -> Tensor:
    """The classes the federated loss trains in this iteration, as a boolean mask.

    Every class with a label in ``labels`` is included; then, while fewer than
    ``num_sample_classes`` are, classes drawn without replacement with probability
    proportional to ``weights`` among the others (successive sampling: the first draw has
    probability ``w_c / sum w`` of the remaining classes, and so on, so for more than one
    draw the inclusion probabilities are not exactly proportional to ``w``, as in the
    reference). With ``num_sample_classes >= C`` every class is included: the loss is then
    the plain sigmoid cross-entropy.

    Unlike the reference, background labels take no place among the ``num_sample_classes``
    (there, the background label is one of the "present classes", so 49 real classes are
    trained).

    Args:
        labels: ``int Tensor[N]``; values in ``[0, C)`` are classes, anything else background.
        weights: ``Tensor[C]`` positive sampling weights (:func:`federated_class_weights`).
        num_sample_classes: number of classes to train, ``>= 1``.
        generator: random generator on ``weights``' device, or ``None`` for the global one.

    Returns:
        ``bool Tensor[C]`` on ``weights``' device.

    Raises:
        ValueError: on a wrong shape or ``num_sample_classes < 1``.
    """
    if weights.dim() != 1 or weights.numel() == 0:
        raise ValueError(f"weights must be a non-empty Tensor[C], got shape "
                         f"{tuple(weights.shape)}")
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer Tensor[N], got dtype {labels.dtype} and "
                         f"shape {tuple(labels.shape)}")
    if num_sample_classes < 1:
        raise ValueError(f"num_sample_classes must be >= 1, got {num_sample_classes}")
    num_classes = len(weights)
    labels = labels.to(weights.device)
    chosen = torch.zeros(num_classes, dtype=torch.bool, device=weights.device)
    chosen[labels[(labels >= 0) & (labels < num_classes)]] = True
    # One device-to-host copy: the number of draws decides the shape of what follows.
    missing = min(num_sample_classes, num_classes) - int(chosen.sum())
    if missing > 0:
        prob = torch.where(chosen, torch.zeros_like(weights), weights)
        chosen[torch.multinomial(prob, missing, replacement=False, generator=generator)] = True
    return chosen


def federated_loss(pred: Tensor, labels: Tensor, classes: Tensor) -> Tensor:
    """Element-wise sigmoid cross-entropy restricted to the sampled classes.

    ``loss[n, c] = BCE(x[n, c], [y_n == c]) * [c sampled]``; the reference divides the sum by
    the number of RoIs. A NaN or infinite logit gives a non-finite element (NaN, or ``+inf``
    for an infinite logit on the side opposite its target, as
    ``F.binary_cross_entropy_with_logits``), sampled or not (``NaN * 0`` is NaN), so
    non-finite logits never pass silently.

    Args:
        pred: ``Tensor[N, C]`` logits.
        labels: ``int Tensor[N]``; ``C`` (or any value outside ``[0, C)``) is background.
        classes: ``bool Tensor[C]`` from :func:`sample_federated_classes`.

    Returns:
        ``Tensor[N, C]`` loss in ``float32`` (``float64`` for ``float64`` logits).

    Raises:
        ValueError: on a wrong shape.
    """
    if not isinstance(pred, Tensor) or not pred.is_floating_point() or pred.dim() != 2:
        raise ValueError(f"pred must be a floating-point Tensor[N, C], got {pred!r}")
    if labels.dim() != 1 or labels.shape[0] != pred.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must be an integer Tensor[N] with N={pred.shape[0]}, got "
                         f"dtype {labels.dtype} and shape {tuple(labels.shape)}")
    if classes.shape != (pred.shape[1],):
        raise ValueError(f"classes must have shape ({pred.shape[1]},), got "
                         f"{tuple(classes.shape)}")
    x = pred.to(torch.promote_types(pred.dtype, torch.float32))
    target = (labels[:, None] == torch.arange(x.shape[1], device=x.device)).to(x.dtype)
    loss = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    return loss * classes.to(x.dtype)
