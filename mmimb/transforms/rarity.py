"""Rarity-conditioned augmentation: apply transforms to an image as often as its rarest class asks.

:class:`RarityConditionedApply` wraps a list of ordinary mmdet/mmcv transforms, like mmcv's
``RandomApply``, but the probability of applying them depends on the image: it is ``p_c`` of the
rarest class ``c`` present (the class with the smallest training frequency ``f_c``, boxes flagged
ignore not counted), so heavy augmentation is spent on the images of the tail and head-class
images stay as they are.

The mapping from class to probability (:func:`class_apply_probs`):

- ``'group'`` (default): ``p_c = group_probs[g_c]``, ``g_c`` the LVIS frequency group of ``c``
  (:func:`mmimb.stats.frequency_groups`: rare when its training count ``<= rare_max``, common
  when ``<= common_max``, frequent above). ``group_probs=(1.0, 0.5, 0.0)`` augments every image
  with a rare class, half of those whose rarest class is common, and no other.
- ``'power'``: ``p_c = min(1, scale * (freq_thr / f_c) ** power)``, the form of LVIS's repeat
  factors (Gupta et al., CVPR 2019): ``scale`` at the threshold frequency, more below it, less
  above it.

Images without objects get ``empty_prob``. The coin flip follows the determinism contract of
:mod:`mmimb.transforms._common`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS

from mmimb.stats import ClassStats, class_frequencies, frequency_groups
from mmimb.transforms._common import (
    ProcessRNG,
    build_annotation_dataset,
    check_number,
    check_unit_interval,
    class_stats_of,
)
from mmimb.transforms.crop_bank import check_freq_thr

#: Mappings from a class's training statistics to the probability of augmenting its images.
MAPPINGS: tuple[str, str] = ("group", "power")


def class_apply_probs(stats: ClassStats, mapping: str = "group",
                      group_probs: Sequence[float] = (1.0, 0.5, 0.0), rare_max: float = 10,
                      common_max: float = 100, freq_thr: float = 0.01, scale: float = 1.0,
                      power: float = 0.5, by: str = "image") -> np.ndarray:
    """Probability ``p_c`` of augmenting an image whose rarest class is ``c``.

    Args:
        stats: class counts of the training set.
        mapping: ``'group'`` or ``'power'`` (see the module docstring).
        group_probs: ``(rare, common, frequent)`` probabilities of ``'group'``.
        rare_max: largest training count of a rare class (``'group'``).
        common_max: largest training count of a common class (``'group'``).
        freq_thr: frequency threshold ``t`` of ``'power'``.
        scale: probability ``a`` at ``f_c = t`` (``'power'``).
        power: exponent ``q`` (``'power'``).
        by: counts and frequencies over ``'image'`` or ``'instance'``.

    Returns:
        ``float64[C]`` in ``[0, 1]``. Under ``'power'`` a class never seen in training gets 1
        (0 when ``scale`` is 0).

    Raises:
        ValueError: naming the argument, on invalid values.
    """
    check_mapping_args(mapping, group_probs, rare_max, common_max, freq_thr, scale, power)
    if mapping == "group":
        groups = frequency_groups(stats.counts(by), rare_max, common_max)
        return np.asarray(group_probs, dtype=np.float64)[groups]
    freq = class_frequencies(stats, by)
    ratio = np.divide(freq_thr, freq, out=np.full_like(freq, np.inf), where=freq > 0)
    with np.errstate(invalid="ignore"):
        probs = np.minimum(1.0, scale * ratio ** power)
    return np.where(np.isnan(probs), 0.0, probs)


def check_mapping_args(mapping: str, group_probs: Sequence[float], rare_max: float,
                       common_max: float, freq_thr: float, scale: float, power: float) -> None:
    """Validate the arguments of :func:`class_apply_probs`.

    Raises:
        ValueError: naming the first invalid argument.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    if isinstance(group_probs, str) or not isinstance(group_probs, Sequence) \
            or len(group_probs) != 3:
        raise ValueError(f"group_probs must be 3 probabilities (rare, common, frequent), got "
                         f"{group_probs!r}")
    for name, p in zip(("rare", "common", "frequent"), group_probs, strict=True):
        check_unit_interval(p, f"group_probs ({name})")
    frequency_groups(np.zeros(0), rare_max, common_max)  # validates both thresholds
    if freq_thr is None:
        raise ValueError("freq_thr must be a class frequency in (0, 1], got None")
    check_freq_thr(freq_thr)
    check_number(scale, "scale")
    check_number(power, "power")


def _as_class_stats(value: ClassStats | dict[str, Any]) -> ClassStats:
    if isinstance(value, ClassStats):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"class_stats must be a ClassStats or its to_dict() dict, got "
                         f"{type(value).__name__}")
    try:
        return ClassStats(instance_counts=np.asarray(value["instance_counts"], dtype=np.int64),
                          image_counts=np.asarray(value["image_counts"], dtype=np.int64),
                          num_images=int(value["num_images"]),
                          num_empty_images=int(value.get("num_empty_images", 0)),
                          classes=tuple(value.get("classes", ())))
    except KeyError as err:
        raise ValueError(f"class_stats lacks {err}: give instance_counts, image_counts and "
                         f"num_images (ClassStats.to_dict())") from None


@TRANSFORMS.register_module()
class RarityConditionedApply(BaseTransform):
    """Apply ``transforms`` with a probability set by the rarest class in the image.

    See the module docstring for the mapping. Training statistics come from ``dataset`` (read
    once per process through :mod:`mmimb.stats`, like :class:`~mmimb.transforms.
    RareClassCopyPaste`) or are given as ``class_stats``.

    Required keys: ``gt_bboxes_labels`` (with ``gt_ignore_flags``) after ``LoadAnnotations``, or
    the ``instances`` of the data info before it; plus whatever ``transforms`` need.
    Modified keys: those of ``transforms`` when applied, none otherwise.
    Added keys: ``rarity_prob`` (the probability used) and ``rarity_applied`` (bool).

    Args:
        transforms: transform configs (or callables), applied in order; a ``None`` result (an
            mmdet transform dropping the sample) is returned as it is.
        dataset: the training set or its config dict (e.g. ``{{_base_.train_dataloader.
            dataset}}``).
        class_stats: instead of ``dataset``: a :class:`~mmimb.stats.ClassStats` or its
            ``to_dict()``.
        mapping: ``'group'`` or ``'power'``.
        group_probs: ``(rare, common, frequent)`` probabilities of ``'group'``.
        rare_max: largest training count of a rare class.
        common_max: largest training count of a common class.
        freq_thr: threshold frequency ``t`` of ``'power'``.
        scale: probability at ``f_c = t`` of ``'power'``.
        power: exponent of ``'power'``.
        by: count classes over ``'image'`` (LVIS) or ``'instance'``.
        empty_prob: probability for images without objects.
        seed: seed of the coin flips.
        lazy_init: read the statistics on the first call; ``False`` reads them now.

    Raises:
        ValueError: naming the argument: no transforms, neither or both of ``dataset`` and
            ``class_stats``, a probability outside ``[0, 1]``, an unknown ``mapping`` or
            ``by``, invalid thresholds; when called, a label outside the ``C`` classes of the
            statistics.
    """

    def __init__(self, transforms: Sequence[dict[str, Any] | Callable[[dict], dict | None]],
                 dataset: Any = None, class_stats: ClassStats | dict[str, Any] | None = None,
                 mapping: str = "group", group_probs: Sequence[float] = (1.0, 0.5, 0.0),
                 rare_max: float = 10, common_max: float = 100, freq_thr: float = 0.01,
                 scale: float = 1.0, power: float = 0.5, by: str = "image",
                 empty_prob: float = 0.0, seed: int = 0, lazy_init: bool = True) -> None:
        if isinstance(transforms, dict) or not isinstance(transforms, Sequence) \
                or len(transforms) == 0:
            raise ValueError(f"transforms must be a non-empty list of transform configs, got "
                             f"{transforms!r}")
        if (dataset is None) == (class_stats is None):
            raise ValueError("give exactly one of dataset (the training set or its config) and "
                             "class_stats")
        check_mapping_args(mapping, group_probs, rare_max, common_max, freq_thr, scale, power)
        if by not in ("image", "instance"):
            raise ValueError(f"by must be 'image' or 'instance', got {by!r}")
        self.transforms: list[Callable[[dict], dict | None]] = [
            TRANSFORMS.build(t) if isinstance(t, dict) else t for t in transforms]
        self.dataset = dataset
        self.mapping_args: dict[str, Any] = dict(
            mapping=mapping, group_probs=tuple(float(p) for p in group_probs),
            rare_max=rare_max, common_max=common_max, freq_thr=freq_thr, scale=scale,
            power=power, by=by)
        self.empty_prob = check_unit_interval(empty_prob, "empty_prob")
        self._stats = None if class_stats is None else _as_class_stats(class_stats)
        self._rng = ProcessRNG(seed)
        self._tables: tuple[np.ndarray, np.ndarray] | None = None
        if not lazy_init:
            self.full_init()

    def full_init(self) -> None:
        """Read the statistics and compute the class probabilities (once)."""
        self._class_tables()

    def _class_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """``(f_c, p_c)``, both ``float64[C]``, computed on first use."""
        if self._tables is None:
            stats = self._stats or class_stats_of(build_annotation_dataset(self.dataset))
            self._tables = (class_frequencies(stats, self.mapping_args["by"]),
                            class_apply_probs(stats, **self.mapping_args))
        return self._tables

    @property
    def class_probs(self) -> np.ndarray:
        """``float64[C]``: probability of applying the transforms when ``c`` is the rarest."""
        return self._class_tables()[1]

    def image_prob(self, labels: np.ndarray) -> float:
        """Probability of applying the transforms to an image with these (non-ignored) labels.

        Raises:
            ValueError: if a label is not a class of the training statistics (``[0, C)``).
        """
        if len(labels) == 0:
            return self.empty_prob
        freq, probs = self._class_tables()
        present = np.unique(labels)  # sorted
        if present[0] < 0 or present[-1] >= len(freq):
            bad = present[(present < 0) | (present >= len(freq))].tolist()
            raise ValueError(
                f"RarityConditionedApply got label(s) {bad}, but its training statistics have "
                f"{len(freq)} classes (labels in [0, {len(freq)})): the dataset or class_stats "
                "it was given is not the one this pipeline loads")
        return float(probs[present[np.argmin(freq[present])]])

    @staticmethod
    def _labels(results: dict[str, Any]) -> np.ndarray:
        if "gt_bboxes_labels" in results:
            labels = np.asarray(results["gt_bboxes_labels"], dtype=np.int64)
            ignore = results.get("gt_ignore_flags")
            return labels if ignore is None else labels[~np.asarray(ignore, dtype=bool)]
        if "instances" in results:
            return np.asarray([inst["bbox_label"] for inst in results["instances"]
                               if not inst.get("ignore_flag", 0)], dtype=np.int64)
        raise ValueError("RarityConditionedApply needs results['gt_bboxes_labels'] or the data "
                         "info's 'instances': place it before PackDetInputs")

    def transform(self, results: dict[str, Any]) -> dict[str, Any] | None:
        """Apply the transforms with the image's probability (see the class docstring)."""
        prob = self.image_prob(self._labels(results))
        applied = bool(self._rng.get().random() < prob)
        results["rarity_prob"] = prob
        results["rarity_applied"] = applied
        if not applied:
            return results
        for t in self.transforms:
            out = t(results)
            if out is None:
                return None
            results = out
        return results

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.mapping_args.items())
        return f"{type(self).__name__}(transforms={self.transforms}, {args})"
