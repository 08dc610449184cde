"""Registered gradient-guided losses: :class:`EqualizationLossV2` and :class:`EqualizedFocalLoss`.

Both keep the accumulated positive and negative gradient magnitudes of every foreground class in
the persistent ``float64`` buffers ``pos_grad`` and ``neg_grad`` (``Tensor[C]``), so a checkpoint
saves them and a resumed run continues from them; the formulas are in
:mod:`mmimb.losses.functional_gradient_guided`.

Statistics contract:
    * What is accumulated: ``|dL / dx[n, j]|``, the gradient that the loss returned by
      ``forward`` sends to each foreground logit (sample weights, re-weighting factors,
      ``loss_weight`` and the ``1 / avg_factor`` of the reduction included; with
      ``reduction='none'`` the gradient of the sum), summed over the positives and over the
      negatives of each class. The loss of a call uses the statistics from before the call.
    * When: on every call in training mode (``module.train()``, as in mmengine's train loop);
      in eval mode the loss reads them without updating them.
    * Distributed training: the sums of a call are added up over all ranks with
      ``torch.distributed.all_reduce`` (when a process group is initialised), so every rank
      holds the same statistics, those of the global batch. Every rank must therefore call the
      loss equally often: mmdet's heads do (``BBoxHead`` skips the call only for an empty RoI
      batch, which the RoI sampler does not produce).
    * How many classes: never written twice. ``EqualizationLossV2`` learns ``C`` from the RoI
      head through mmdet's ``get_cls_channels(num_classes)``; ``EqualizedFocalLoss`` from the
      number of logit columns at its first call (dense heads have one per class); ``num_classes``
      is only for use outside a head. Before that the buffers are empty, and loading a
      checkpoint sizes them. A head or a call that disagrees with statistics already sized
      raises ``ValueError`` naming both numbers and where each came from; a checkpoint that
      disagrees gets torch's size-mismatch error, as any other tensor would.

Head protocol (mmdet's ``custom_cls_channels``, ``custom_activation``, ``custom_accuracy``):
both losses make the head predict with the activation they were trained with, which mmdet's
own ``EQLV2Loss`` does not (mmdet issue #11038: ``BBoxHead`` applies softmax to its sigmoid
logits).

Shape shorthand used below:
    N: number of samples (RoIs or anchors)
    C: number of foreground classes
    K: number of logit columns, ``C + 1`` (EQLv2, last column background) or ``C`` (EFL)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from mmdet.models.losses import accuracy
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor, nn

from mmimb.losses.base import _check_count, _check_real, _check_reduction
from mmimb.losses.functional_gradient_guided import (
    check_efl_args,
    check_eqlv2_args,
    efl_focusing_factors,
    eqlv2_class_weights,
    equalization_loss_v2,
    equalized_focal_loss,
    gradient_sums,
)


def _all_reduce_sum(sums: Tensor) -> Tensor:
    """``sums`` added up over all ranks (in place), or unchanged without a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return sums


class _GradientStatisticsLoss(nn.Module):
    """Statistics buffers, their sizing and summation across ranks, and the reduction contract.

    Args:
        num_classes: number of foreground classes ``C``, or ``None`` to learn it from the head.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss, ``>= 0``.
    """

    use_sigmoid = True
    # mmdet's head protocol: the head asks this loss for its classifier width, activation and
    # accuracy instead of assuming a softmax over C + 1 columns.
    custom_cls_channels = True
    custom_activation = True
    custom_accuracy = True

    pos_grad: Tensor
    neg_grad: Tensor

    def __init__(self, num_classes: int | None, reduction: str, loss_weight: float) -> None:
        super().__init__()
        _check_reduction(reduction, "reduction")
        self.reduction = reduction
        self.loss_weight = _check_real(loss_weight, "loss_weight")
        if self.loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}")
        self.register_buffer("pos_grad", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(0, dtype=torch.float64))
        self._classes_from = ""
        if num_classes is not None:
            num_classes = _check_count(num_classes, "num_classes")
            self._size_statistics(num_classes, f"num_classes={num_classes}")

    @property
    def num_classes(self) -> int | None:
        """Number of foreground classes ``C``, or ``None`` while it is not known yet."""
        return self.pos_grad.numel() or None

    def _size_statistics(self, num_classes: int, source: str) -> None:
        """Allocate zero statistics for ``num_classes`` classes, or check that they match."""
        if self.num_classes is None:
            device = self.pos_grad.device
            self.pos_grad = torch.zeros(num_classes, dtype=torch.float64, device=device)
            self.neg_grad = torch.zeros(num_classes, dtype=torch.float64, device=device)
            self._classes_from = source
        elif num_classes != self.num_classes:
            raise ValueError(
                f"{type(self).__name__}: {source} gives {num_classes} classes, but the loss has "
                f"statistics for {self.num_classes} classes (from {self._classes_from}); the "
                "head's num_classes, the loss and the checkpoint must agree")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # An empty module (classes not known yet) takes its size from the checkpoint; mmengine's
        # load_checkpoint calls this method directly, not load_state_dict.
        incoming = state_dict.get(prefix + "pos_grad")
        if self.num_classes is None and isinstance(incoming, Tensor) and incoming.numel() > 0:
            self._size_statistics(incoming.numel(), "a checkpoint")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _reduce(self, loss: Tensor, weight: Tensor | None, avg_factor: float | None,
                reduction_override: str | None) -> tuple[Tensor, Tensor | None, float]:
        """mmdet's ``weight_reduce_loss``, except that the mean of an empty input is 0.

        Returns:
            The reduced loss (without ``loss_weight``), the weight as ``[N, 1]`` or ``[N, K]``
            (or ``None``), and the number the weighted sum was divided by.
        """
        if reduction_override is not None:
            _check_reduction(reduction_override, "reduction_override")
        reduction = reduction_override or self.reduction
        if weight is not None:
            if weight.shape not in (loss.shape, loss.shape[:1]):
                raise ValueError(f"weight must have shape ({loss.shape[0]},) or "
                                 f"{tuple(loss.shape)}, got {tuple(weight.shape)}")
            weight = weight.to(loss.dtype)
            if weight.dim() == 1:
                weight = weight[:, None]
        if reduction == "mean" and avg_factor is None:
            denominator = float(max(loss.numel(), 1))
            weighted = loss if weight is None else loss * weight
            return weighted.sum() / denominator, weight, denominator
        reduced = weight_reduce_loss(loss, weight, reduction, avg_factor)
        if reduction == "mean" and avg_factor is not None:
            # weight_reduce_loss divides by avg_factor + eps (float32's).
            return reduced, weight, float(avg_factor) + torch.finfo(torch.float32).eps
        return reduced, weight, 1.0

    def _accumulate(self, grad: Tensor, labels: Tensor, weight: Tensor | None,
                    scale: float) -> None:
        """Add the gradient sums of ``scale * weight * grad`` over all ranks to the statistics."""
        num_classes = self.pos_grad.numel()
        weighted = grad[:, :num_classes]
        if weight is not None:
            weighted = weighted * weight[:, :num_classes]
        sums = _all_reduce_sum(gradient_sums(weighted, labels) * scale)
        self.pos_grad += sums[0].to(self.pos_grad.device)
        self.neg_grad += sums[1].to(self.neg_grad.device)

    def _finish(self, loss: Tensor, grad: Tensor, labels: Tensor, weight: Tensor | None,
                avg_factor: float | None, reduction_override: str | None) -> Tensor:
        """Reduce and scale by ``loss_weight``; in training mode, add the gradient of the
        result to the statistics."""
        reduced, weight, denominator = self._reduce(loss, weight, avg_factor, reduction_override)
        if self.training:
            self._accumulate(grad, labels, weight, self.loss_weight / denominator)
        return self.loss_weight * reduced

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, reduction={self.reduction!r}, "
                f"loss_weight={self.loss_weight}")


@MODELS.register_module()
class EqualizationLossV2(_GradientStatisticsLoss):
    """Equalization Loss v2 for RoI heads (Tan et al., CVPR 2021), with mmdet's head protocol.

    Sigmoid cross-entropy over ``C + 1`` logits, the last one a background ("objectness")
    classifier as in the reference implementation (tztztztztz/eqlv2). Each foreground class's
    negatives are weighted ``q_j = 1 / (1 + exp(-gamma (g_j - mu)))`` and its positives
    ``r_j = 1 + alpha (1 - q_j)``, where ``g_j`` is the ratio of the accumulated positive to
    negative gradient of class ``j``
    (:func:`~mmimb.losses.functional_gradient_guided.equalization_loss_v2`); the background
    column has weight 1 and no statistics. Defaults are the paper's: ``gamma=12, mu=0.8,
    alpha=4``.

    In a head (``Shared2FCBBoxHead`` and the other ``BBoxHead`` subclasses)::

        loss_cls=dict(type='EqualizationLossV2')

    The head calls :meth:`get_cls_channels` with its ``num_classes`` (which sizes the
    statistics: no second ``num_classes`` to write), builds ``C + 1`` outputs, and predicts
    with :meth:`get_activation`: ``sigmoid(x_j) * (1 - sigmoid(x_bg))`` for the foreground
    classes, as the reference's ``get_activation`` does, so scores lie in ``[0, 1]``.

    Statistics: see the module docstring. They differ from the reference's by a constant factor
    (the reference accumulates the gradient of the summed loss; here the loss is also divided
    by ``avg_factor``, the RoI batch size, and scaled by ``loss_weight``, both the same every
    iteration), which leaves ``g_j`` unchanged.

    Args:
        use_sigmoid: must be ``True`` (accepted for config compatibility).
        num_classes: ``C``, or ``None`` (default) to take it from the head; for use outside a
            head.
        gamma: steepness of the weight mapping, ``> 0``.
        mu: centre of the weight mapping, ``>= 0``.
        alpha: extra weight of the positives, ``>= 0``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss, ``>= 0``.

    Raises:
        ValueError: on an argument outside its range.
        TypeError: on an argument of the wrong type.
    """

    def __init__(self, use_sigmoid: bool = True, num_classes: int | None = None,
                 gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0,
                 reduction: str = "mean", loss_weight: float = 1.0) -> None:
        if use_sigmoid is not True:
            raise ValueError(
                f"use_sigmoid must be True for {type(self).__name__} (a sigmoid loss), got "
                f"{use_sigmoid!r}; a config that inherits a softmax loss_cls needs _delete_=True "
                "in the new loss_cls")
        self.gamma = _check_real(gamma, "gamma")
        self.mu = _check_real(mu, "mu")
        self.alpha = _check_real(alpha, "alpha")
        check_eqlv2_args(self.gamma, self.mu, self.alpha)
        super().__init__(num_classes, reduction, loss_weight)

    def get_cls_channels(self, num_classes: int) -> int:
        """Size the statistics for the head's ``num_classes``; the classifier has one more
        output, the background."""
        self._size_statistics(num_classes, f"the head's num_classes={num_classes}")
        return num_classes + 1

    def _check_columns(self, pred: Tensor) -> int:
        num_classes = self.num_classes
        if num_classes is None:
            raise ValueError(
                f"{type(self).__name__} does not know the number of classes: the head did not "
                "call get_cls_channels(num_classes), so it does not follow mmdet's "
                "custom_cls_channels protocol (dense heads such as RetinaHead do not; use "
                "EqualizedFocalLoss there). Outside a head, give num_classes")
        if pred.dim() != 2 or pred.shape[1] != num_classes + 1:
            raise ValueError(f"pred must be Tensor[N, {num_classes + 1}] (C = {num_classes} "
                             f"classes from {self._classes_from}, plus the background), got "
                             f"{tuple(pred.shape)}")
        return num_classes

    def class_weights(self) -> tuple[Tensor, Tensor]:
        """``(pos_weight, neg_weight)``, the ``float64[C]`` weights the next call will use."""
        return eqlv2_class_weights(self.pos_grad, self.neg_grad, self.gamma, self.mu,
                                   self.alpha)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """Loss of ``Tensor[N, C + 1]`` logits against ``int[N]`` labels in ``[0, C]`` (``C`` =
        background), with ``[N]`` or ``[N, C + 1]`` weights; ``'none'`` gives ``[N, C + 1]``."""
        self._check_columns(pred)
        loss, grad = equalization_loss_v2(pred, target, self.pos_grad, self.neg_grad,
                                          self.gamma, self.mu, self.alpha)
        return self._finish(loss, grad, target, weight, avg_factor, reduction_override)

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Scores ``Tensor[N, C + 1]`` in ``[0, 1]``: ``sigmoid(x_j) * (1 - sigmoid(x_bg))`` for
        the classes, then ``sigmoid(x_bg)`` (mmdet's NMS drops the last column)."""
        self._check_columns(cls_score)
        prob = cls_score.sigmoid()
        background = prob[:, -1:]
        return torch.cat([prob[:, :-1] * (1 - background), background], dim=1)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Percent accuracies: ``acc_objectness`` of the background classifier (foreground when
        ``x_bg < 0``) over all RoIs, ``acc_classes`` of the arg-max class over foreground RoIs."""
        num_classes = self._check_columns(cls_score)
        is_background = labels == num_classes
        if labels.numel() == 0:
            acc_objectness = cls_score.new_tensor(0.0)
        else:
            correct = (cls_score[:, num_classes] > 0) == is_background
            acc_objectness = correct.float().mean() * 100
        foreground = (labels >= 0) & (labels < num_classes)
        acc_classes = accuracy(cls_score[foreground, :num_classes], labels[foreground])
        return dict(acc_objectness=acc_objectness, acc_classes=acc_classes)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}, " + super().extra_repr()


@MODELS.register_module()
class EqualizedFocalLoss(_GradientStatisticsLoss):
    """Equalized focal loss for dense sigmoid heads (Li et al., CVPR 2022).

    The sigmoid focal loss with a focusing factor per class, ``gamma_j = gamma_b + s (1 - g_j)``,
    and a weighting factor ``gamma_j / gamma_b``, where ``g_j`` is the accumulated positive to
    negative gradient ratio of class ``j`` clamped to ``[0, 1]``
    (:func:`~mmimb.losses.functional_gradient_guided.equalized_focal_loss`). Defaults are the
    paper's: ``gamma_b=2, scale_factor=8, alpha=0.25``. With ``scale_factor=0`` it is the focal
    loss.

    In a dense head (``RetinaHead`` and other ``AnchorHead``-like heads)::

        loss_cls=dict(type='EqualizedFocalLoss', use_sigmoid=True)

    ``use_sigmoid=True`` must be written in the config: mmdet's dense heads read it from the
    config dict (where it defaults to ``False``) to give the classifier one output per class;
    without it they would add a background column and predict with a softmax. The number of
    classes is taken from the number of logit columns at the first call. The head predicts with
    :meth:`get_activation`, the sigmoid the loss is trained with. RoI heads are not supported
    (they add a background column; use :class:`EqualizationLossV2`): building one with this loss
    raises.

    Statistics: see the module docstring. They are the gradients the reference implementation
    (ModelTC/EOD) reads in backward, with one difference: mmdet's ``AnchorHead`` calls the loss
    once per pyramid level, and each call updates the statistics, so later levels of an
    iteration see the earlier levels' gradients (the reference updates once per iteration).

    Args:
        use_sigmoid: must be ``True``, and written in the config.
        num_classes: ``C``, or ``None`` (default) to take it from the first call.
        gamma_b: focusing factor of a balanced class, ``> 0``.
        scale_factor: ``s``, range of the focusing factors, ``>= 0``.
        alpha: positive-term weight in ``[0, 1]``, or ``None`` for none.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss, ``>= 0``.

    Raises:
        ValueError: on an argument outside its range, or ``use_sigmoid`` not ``True``.
        TypeError: on an argument of the wrong type.
    """

    def __init__(self, use_sigmoid: bool | None = None, num_classes: int | None = None,
                 gamma_b: float = 2.0, scale_factor: float = 8.0, alpha: float | None = 0.25,
                 reduction: str = "mean", loss_weight: float = 1.0) -> None:
        if use_sigmoid is not True:
            raise ValueError(
                f"use_sigmoid must be True for {type(self).__name__}, got {use_sigmoid!r}: write "
                f"loss_cls=dict(type='{type(self).__name__}', use_sigmoid=True, ...), because "
                "mmdet's dense heads read use_sigmoid from the config (default False) to size "
                "their classifier")
        self.gamma_b = _check_real(gamma_b, "gamma_b")
        self.scale_factor = _check_real(scale_factor, "scale_factor")
        self.alpha = None if alpha is None else _check_real(alpha, "alpha")
        check_efl_args(self.gamma_b, self.scale_factor, self.alpha)
        super().__init__(num_classes, reduction, loss_weight)

    def get_cls_channels(self, num_classes: int) -> int:
        """Called by RoI heads only, which this loss does not support.

        Raises:
            ValueError: always.
        """
        raise ValueError(
            f"{type(self).__name__} is a loss for dense sigmoid heads (RetinaHead, ...) without "
            f"a background column, but an RoI head (num_classes={num_classes}) asked for its "
            "classifier width: use EqualizationLossV2 in RoI heads")

    def focusing_factors(self) -> Tensor:
        """``float64[C]`` focusing factors ``gamma_j`` the next call will use."""
        return efl_focusing_factors(self.pos_grad, self.neg_grad, self.gamma_b,
                                    self.scale_factor)

    def _check_columns(self, pred: Tensor) -> int:
        if pred.dim() != 2:
            raise ValueError(f"pred must be Tensor[N, C], got shape {tuple(pred.shape)}")
        self._size_statistics(pred.shape[1], f"pred (Tensor[N, C] with C={pred.shape[1]})")
        return pred.shape[1]

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """Loss of ``Tensor[N, C]`` logits against ``int[N]`` labels (``C`` = background), with
        ``[N]`` or ``[N, C]`` weights; ``'none'`` gives ``[N, C]``."""
        self._check_columns(pred)
        loss, grad = equalized_focal_loss(pred, target, self.pos_grad, self.neg_grad,
                                          self.gamma_b, self.scale_factor, self.alpha)
        return self._finish(loss, grad, target, weight, avg_factor, reduction_override)

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Scores ``sigmoid(cls_score)``, ``Tensor[N, C]`` in ``[0, 1]``."""
        if self.num_classes is not None:
            self._check_columns(cls_score)
        return cls_score.sigmoid()

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``acc_classes``: percent accuracy of the arg-max class over the positive samples."""
        positive = (labels >= 0) & (labels < cls_score.shape[1])
        return dict(acc_classes=accuracy(cls_score[positive], labels[positive]))

    def extra_repr(self) -> str:
        return (f"gamma_b={self.gamma_b}, scale_factor={self.scale_factor}, alpha={self.alpha}, "
                + super().extra_repr())
