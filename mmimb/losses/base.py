"""What every mmimb loss module shares: class counts, the number of classes, mmdet's head protocol.

:class:`CountsLoss` is the base of the registered loss modules. It holds

* the per-class training counts in the persistent ``int64`` buffer ``class_counts`` (given,
  or filled in from the training set with ``class_counts='auto'`` and
  :class:`mmimb.hooks.ClassStatsHook`); ``-1`` marks counts not yet known. The buffer is saved
  in checkpoints and restored on resume; a checkpoint without it (a model trained with another
  loss) loads without complaint, strict or not, and the counts then come from the hook;
* the number of classes ``C``, written once: it comes from the loss's own ``num_classes`` or
  per-class vectors, from the RoI head (mmdet's ``BBoxHead`` calls :meth:`get_cls_channels`
  with its ``num_classes`` when it is built), or from the training set (the length of the
  counts the hook hands over). Any two that disagree raise one ``ValueError`` naming all three;
* mmdet's head/loss protocol (``custom_cls_channels``, ``custom_activation``,
  ``custom_accuracy`` with :meth:`get_cls_channels`, :meth:`get_activation`,
  :meth:`get_accuracy`, as in mmdet's ``SeesawLoss``), so that an RoI head sizes its classifier
  for the loss and scores RoIs with the activation the loss was trained with;
* mmdet's reduction contract (``weight``, ``avg_factor``, ``reduction_override``).

Two kinds of head read the protocol. ``BBoxHead`` (and its subclasses) calls
:meth:`get_cls_channels` when built and, at inference, :meth:`get_activation`, whose scores
must then have ``C + 1`` columns, the last one (the background) dropped by the NMS. Dense heads
(``RetinaHead`` and others built on ``BaseDenseHead``) never call :meth:`get_cls_channels`,
size their classifier from ``use_sigmoid`` in the loss config, and, because
``custom_cls_channels`` is true, also score with :meth:`get_activation`, expecting ``C``
columns. :meth:`get_activation` therefore returns what the head that built the classifier
expects: ``C + 1`` columns once an RoI head sized the loss, else the dense head's own scores.
Losses that only make sense in an RoI head (``requires_roi_head``) refuse to run elsewhere.

Shape shorthand used below:
    N: number of samples (anchors or RoIs)
    C: number of foreground classes (``num_classes``)
    K: number of classifier outputs, ``C`` or ``C + 1`` with a background column
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (the universal alias)
from mmdet.models.losses import accuracy
from mmdet.models.losses.utils import weight_reduce_loss
from torch import Tensor, nn

from mmimb.stats import validate_counts

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


def _check_count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _as_vector(value: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


class CountsLoss(nn.Module):
    """Base of mmimb's loss modules: counts, number of classes, head protocol, reduction.

    Subclasses set the class attributes below and implement ``forward``; they override
    :meth:`_counts_changed` to recompute what they derive from the counts (kept in
    non-persistent buffers, recomputed whenever counts are set or restored), and
    :meth:`_roi_scores` / :meth:`get_accuracy` when their scores are not the plain softmax or
    sigmoid.

    Args:
        num_classes: number of foreground classes ``C``, or ``None`` to take it from the
            per-class vectors, the RoI head or the training set.
        class_counts: ``[C]`` training counts per class, ``'auto'`` to receive them from
            :class:`mmimb.hooks.ClassStatsHook` before the first iteration, or ``None`` for a
            loss that does not use counts.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: factor multiplying the loss.
        vectors: lengths of the subclass's other per-class arguments, by name.

    Raises:
        ValueError: on a bad ``class_counts``, ``reduction`` or ``num_classes``, or per-class
            vectors whose lengths disagree.
        TypeError: on an argument of the wrong type.
    """

    #: Sigmoid (one binary classifier per column) or softmax scores.
    use_sigmoid: bool
    #: ``int64[C]`` training counts (``-1``: not known yet; empty while ``C`` is unknown), or
    #: ``None`` for a loss built without counts.
    class_counts: Tensor | None
    #: What :class:`~mmimb.hooks.ClassStatsHook` counts for this loss: ``'instance'``,
    #: ``'image'``, or ``None`` for the hook's own ``by``.
    counts_by: str | None = None
    #: Whether the loss only works in an RoI head that follows mmdet's protocol.
    requires_roi_head = False
    #: Read by mmdet's heads: the loss decides the classifier's outputs and the scores.
    custom_cls_channels = True
    #: Non-persistent buffers that :meth:`_counts_changed` fills (derived from the counts, so
    #: not saved, but moved with the module).
    derived_buffers: tuple[str, ...] = ()

    def __init__(self, num_classes: int | None, class_counts: ClassCounts, reduction: str,
                 loss_weight: float, vectors: dict[str, int] | None = None) -> None:
        super().__init__()
        for name in self.derived_buffers:
            self.register_buffer(name, None, persistent=False)
        _check_reduction(reduction, "reduction")
        self.reduction = reduction
        self.loss_weight = _check_real(loss_weight, "loss_weight")
        if isinstance(class_counts, str) and class_counts != "auto":
            raise ValueError(f"class_counts must be a sequence, 'auto' or None, got "
                             f"{class_counts!r}")
        self.counts_from_dataset = class_counts == "auto"
        self.takes_counts = class_counts is not None
        lengths = dict(vectors or {})
        counts_arr = None
        if class_counts is not None and not isinstance(class_counts, str):
            counts_arr = _as_vector(class_counts, "class_counts")
            lengths["class_counts"] = len(counts_arr)
        self._loss_classes = self._resolve_num_classes(num_classes, lengths)
        self._head_classes: int | None = None
        self._counted_classes: int | None = None
        # An empty placeholder while C is unknown: it moves with the module (.cuda()), so counts
        # that arrive later land on the module's device.
        placeholder = torch.full((self.num_classes or 0,), _UNSET, dtype=torch.int64)
        self.register_buffer("class_counts", placeholder if self.takes_counts else None)
        self._counts_ready = False
        if counts_arr is not None:
            self._store_counts(counts_arr)

    # -- number of classes -------------------------------------------------------------------

    @staticmethod
    def _resolve_num_classes(num_classes: int | None, lengths: dict[str, int]) -> int | None:
        if num_classes is not None:
            _check_count(num_classes, "num_classes")
        expected = num_classes if num_classes is not None else next(iter(lengths.values()), None)
        for name, length in lengths.items():
            if length != expected:
                source = "num_classes" if num_classes is not None else "the other vectors"
                raise ValueError(f"{name} has {length} entries but {source} gives {expected} "
                                 f"classes ({lengths})")
        return expected

    @property
    def num_classes(self) -> int | None:
        """``C``, from the loss's arguments, the RoI head or the training set (``None``: none
        of them is known yet)."""
        for known in (self._loss_classes, self._head_classes, self._counted_classes):
            if known is not None:
                return known
        return None

    def _sources(self) -> str:
        """The three places ``C`` can come from, and what each says."""
        def say(value: int | None, unknown: str) -> str:
            return unknown if value is None else str(value)
        return (f"head num_classes: {say(self._head_classes, 'not known (no RoI head sized it)')}"
                f"; loss num_classes: {say(self._loss_classes, 'not given')}"
                f"; training set / class_counts: "
                f"{say(self._counted_classes, 'not counted yet')} classes")

    def get_cls_channels(self, num_classes: int) -> int:
        """Number of classifier outputs for a head with ``num_classes`` classes.

        Called by mmdet's ``BBoxHead`` when it is built; the head's ``num_classes`` becomes the
        loss's (it need not be written twice in a config).

        Returns:
            ``C + 1`` for a loss with a background column, else ``C``.

        Raises:
            ValueError: if ``num_classes`` disagrees with the loss's own or the training set's.
        """
        _check_count(num_classes, "num_classes")
        known = self.num_classes
        if known is not None and num_classes != known:
            self._head_classes = num_classes
            raise ValueError(
                f"{type(self).__name__}: the head has num_classes={num_classes} but the loss "
                f"has num_classes={known} ({self._sources()})")
        self._head_classes = num_classes
        if self.class_counts is not None and self.class_counts.numel() == 0:
            self._allocate_counts(num_classes)
        return num_classes + 1 if self.background_column else num_classes

    @property
    def background_column(self) -> bool:
        """Whether the RoI head's classifier has a background output (``K = C + 1``)."""
        return not self.use_sigmoid

    # -- class counts ------------------------------------------------------------------------

    def _allocate_counts(self, num_classes: int) -> None:
        assert self.class_counts is not None  # only for losses that take counts
        self.class_counts = torch.full((num_classes,), _UNSET, dtype=torch.int64,
                                       device=self.class_counts.device)

    def set_class_counts(self, counts: Sequence[float] | np.ndarray) -> None:
        """Store per-class training counts and recompute what the loss derives from them.

        :class:`mmimb.hooks.ClassStatsHook` calls this with the training set's counts; if the
        number of classes was not known yet, it is from now on.

        Args:
            counts: ``[C]`` non-negative whole numbers (instances or images per class).

        Raises:
            ValueError: if this loss takes no counts, or the counts have the wrong length
                (naming the head's, the loss's and the counts' number of classes), are
                negative, or not whole numbers.
        """
        if not self.takes_counts:
            raise ValueError(f"{type(self).__name__} was built without class_counts; set "
                             "class_counts='auto' or a list to use class counts")
        arr = np.asarray(counts, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape "
                             f"{arr.shape}")
        length = len(arr)
        known = self.num_classes
        if known is not None and length != known:
            raise ValueError(
                f"{type(self).__name__}: class_counts has {length} entries (shape {arr.shape}) "
                f"but num_classes={known} (head num_classes: {self._head_classes}; loss "
                f"num_classes: {self._loss_classes}; training set / class_counts: {length} "
                "classes)")
        self._counted_classes = length
        self._store_counts(arr)

    def _store_counts(self, counts: np.ndarray) -> None:
        arr = validate_counts(counts, len(counts))
        if np.any(arr != np.round(arr)):
            raise ValueError(f"class_counts must be whole numbers, got {arr.tolist()}")
        assert self.class_counts is not None  # only for losses that take counts
        if self.class_counts.numel() == 0:
            self._allocate_counts(len(arr))
        self.class_counts.copy_(torch.as_tensor(arr, dtype=torch.int64))
        self._refresh()

    def get_class_counts(self) -> np.ndarray | None:
        """``int64[C]`` counts in use, or ``None`` when none are set (yet)."""
        if self.class_counts is None or not self._counts_ready:
            return None
        return self.class_counts.cpu().numpy().copy()

    def _refresh(self) -> None:
        assert self.class_counts is not None  # only called when counts exist
        counts = self.class_counts.cpu().numpy()
        self._counts_ready = counts.size > 0 and bool(np.all(counts >= 0))
        if self._counts_ready:
            self._counts_changed(counts.astype(np.float64), self.class_counts.device)

    def _counts_changed(self, counts: np.ndarray, device: torch.device) -> None:
        """Recompute what the subclass derives from ``float64[C]`` counts, on ``device``."""

    def _require_counts(self) -> None:
        """Raise unless counts are set."""
        if not self._counts_ready:
            raise ValueError(
                f"{type(self).__name__}(class_counts='auto', num_classes={self.num_classes}) "
                "has no class counts: no training dataset supplied them. Add "
                "custom_hooks=[dict(type='ClassStatsHook')] to the config (training, and "
                "tools/test.py for a checkpoint without counts) or give class_counts explicitly")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # mmengine's load_checkpoint calls this method directly (not load_state_dict): the
        # buffer is sized here when C is not known yet, a checkpoint without counts is not an
        # error, and what the loss derives from restored counts is recomputed here.
        key = prefix + "class_counts"
        saved = state_dict.get(key)
        if isinstance(saved, Tensor) and saved.numel() == 0:
            # Saved before any counts were known: nothing to restore.
            state_dict = {k: v for k, v in state_dict.items() if k != key}
            saved = None
        if (self.class_counts is not None and self.class_counts.numel() == 0
                and isinstance(saved, Tensor) and saved.dim() == 1):
            self._allocate_counts(len(saved))
            self._counted_classes = len(saved)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if saved is None and key in missing_keys:
            missing_keys.remove(key)
        if self.class_counts is not None:
            self._refresh()

    # -- mmdet's head protocol ---------------------------------------------------------------

    @property
    def custom_activation(self) -> bool:
        """Read by ``BBoxHead``: accuracy from :meth:`get_accuracy`, scores for refinement from
        :meth:`get_activation`. True unless the scores are the head's own softmax."""
        return self.use_sigmoid

    @property
    def custom_accuracy(self) -> bool:
        return self.custom_activation

    @property
    def sized_by_roi_head(self) -> bool:
        """Whether an RoI head called :meth:`get_cls_channels` (mmdet's protocol)."""
        return self._head_classes is not None

    def _require_roi_head(self) -> None:
        if self.requires_roi_head and not self.sized_by_roi_head:
            raise ValueError(
                f"{type(self).__name__} works only as the loss_cls of an RoI head that follows "
                "mmdet's head protocol (BBoxHead and its subclasses such as Shared2FCBBoxHead "
                "call get_cls_channels when they are built and score RoIs with "
                "get_activation). No head sized it: a dense head such as RetinaHead sizes its "
                "classifier from use_sigmoid and would train and score it without this loss's "
                "background handling and activation. Use it in roi_head.bbox_head; called "
                "directly, call get_cls_channels(num_classes) first, as the head does")

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Scores of ``Tensor[N, K]`` logits, as the head that built the classifier expects.

        In an RoI head: ``Tensor[N, C + 1]``, the last column the background (dropped by the
        NMS), from :meth:`_roi_scores`. In a dense head: its own ``sigmoid`` (``[N, C]``) or
        softmax without the background column (``[N, C]``).
        """
        self._require_roi_head()
        if self.sized_by_roi_head:
            return self._roi_scores(cls_score)
        if self.use_sigmoid:
            return cls_score.sigmoid()
        return cls_score.softmax(-1)[:, :-1]

    def _roi_scores(self, cls_score: Tensor) -> Tensor:
        """``softmax`` over ``C + 1`` columns, or ``sigmoid`` with a zero background column."""
        if not self.use_sigmoid:
            return F.softmax(cls_score, dim=-1)
        scores = cls_score.sigmoid()
        if not self.background_column:
            scores = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=1)
        return scores

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Training accuracy in percent, logged by ``BBoxHead`` when :attr:`custom_activation`.

        Softmax: mmdet's top-1 accuracy over the ``C + 1`` columns. Sigmoid without a background
        column: a RoI is predicted as its arg-max class when that class's probability is at
        least 0.5, else as background.
        """
        if not self.use_sigmoid:
            return {"acc": accuracy(cls_score, labels)}
        if cls_score.shape[0] == 0:
            return {"acc": cls_score.new_zeros(1)}
        top, arg = cls_score.detach().max(dim=1)
        predicted = torch.where(top >= 0, arg, torch.full_like(arg, cls_score.shape[1]))
        return {"acc": (predicted == labels).float().mean(0, keepdim=True) * 100}

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
        if (self.use_sigmoid and not self.sized_by_roi_head
                and pred.shape[1] == self.num_classes + 1):
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


def check_label_range(module: CountsLoss, pred: Tensor, target: Tensor) -> None:
    """Raise if an integer label is outside ``[0, C]``: a column of ``pred`` (``[0, K)``) or,
    for a sigmoid classifier without a background column, ``C``, the background.

    One reduction (``aminmax``) and one device-to-host copy per call, on any device; wrong
    shapes and dtypes are left to the functional core, which names them.
    """
    if (target.dim() != 1 or pred.dim() != 2 or target.numel() == 0
            or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool):
        return
    low, high = torch.stack(torch.aminmax(target)).tolist()
    columns = pred.shape[1]
    if module.use_sigmoid and not module.background_column:
        if low < 0 or high > columns:
            raise ValueError(
                f"target holds labels in [{low}, {high}], but {type(module).__name__} needs "
                f"labels in [0, {columns}]: one per row, a class of the {columns} columns of "
                f"pred or {columns}, the background")
        return
    if low < 0 or high >= columns:
        background = (", the last one the background" if module.num_classes is not None
                      and columns == module.num_classes + 1 else "")
        raise ValueError(
            f"target holds labels in [{low}, {high}], but {type(module).__name__} needs labels "
            f"in [0, {columns}): one per row, indexing the {columns} columns of pred"
            f"{background}")
