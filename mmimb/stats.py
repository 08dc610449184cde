"""Class statistics of a detection training set: the one place where classes are counted.

Every other component (losses, samplers, wrappers, metrics, augmentation, analysis tools) reads
its statistics from here and never counts classes again. Everything is pure numpy.

Shape shorthand used below:
    N: number of images
    L: number of instance labels over all images (ragged, stored CSR-style)
    C: number of classes
"""

from __future__ import annotations

import json
import numbers
import pickle
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmimb import label_cache

#: Names of the frequency groups, indexed by the values that :func:`frequency_groups` returns.
GROUP_NAMES: tuple[str, str, str] = ("rare", "common", "frequent")

#: LVIS v1 thresholds (Gupta et al., CVPR 2019): rare = 1-10 training images, common = 11-100,
#: frequent = more than 100.
LVIS_RARE_MAX = 10
LVIS_COMMON_MAX = 100


#: Labels per block of :meth:`ImageLabels.blocks`: bounds the temporaries of the counting
#: passes (a few ``int64`` arrays of this length) whatever the size of the dataset.
BLOCK_LABELS = 1 << 14


def label_dtype(num_classes: int) -> np.dtype[Any]:
    """The smallest of ``int16``, ``int32``, ``int64`` that holds every label in ``[0, C)``.

    LVIS (1203 classes) and Objects365 (365) labels take 2 bytes each instead of 8.
    """
    for dtype in (np.int16, np.int32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class ImageLabels:
    """Instance labels of every image of a dataset, stored as one flat array plus offsets.

    Image ``i`` has the labels ``labels[offsets[i]:offsets[i + 1]]``; an image without boxes
    has an empty slice.

    Attributes:
        labels: ``int[L]`` class index of every instance, image after image, in
            :func:`label_dtype` (any integer array given is converted to it).
        offsets: ``int64[N + 1]`` start of each image's labels in ``labels``.
        num_classes: number of classes ``C``; every label lies in ``[0, C)``.
    """

    labels: np.ndarray
    offsets: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not np.issubdtype(self.labels.dtype, np.integer) and len(self.labels):
            raise TypeError(f"labels must be an integer array, got dtype {self.labels.dtype}")
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if self.offsets[-1] != len(self.labels) or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing and end at len(labels)")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            bad = self.labels[(self.labels < 0) | (self.labels >= self.num_classes)][0]
            raise ValueError(
                f"label {int(bad)} is outside [0, num_classes={self.num_classes})")
        dtype = label_dtype(self.num_classes)
        if self.labels.dtype != dtype:
            object.__setattr__(self, "labels", self.labels.astype(dtype))
        if self.offsets.dtype != np.int64:
            object.__setattr__(self, "offsets", self.offsets.astype(np.int64))

    @classmethod
    def from_lists(cls, per_image: Sequence[Sequence[int]], num_classes: int) -> ImageLabels:
        """Build from one list of labels per image."""
        lengths = np.fromiter((len(x) for x in per_image), dtype=np.int64, count=len(per_image))
        offsets = np.zeros(len(per_image) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = [label for labels in per_image for label in labels]
        return cls(np.asarray(flat, dtype=np.int64), offsets, num_classes)

    @property
    def num_images(self) -> int:
        return len(self.offsets) - 1

    @property
    def image_index(self) -> np.ndarray:
        """``int64[L]``: the image that each entry of ``labels`` belongs to."""
        return np.repeat(np.arange(self.num_images), np.diff(self.offsets))

    def blocks(self, max_labels: int | None = None) -> Iterator[tuple[int, int]]:
        """Consecutive image ranges ``[a, b)`` holding about ``max_labels`` labels each.

        A range holds fewer than ``2 * max_labels`` labels unless one image alone has more.
        Counting block by block keeps every temporary small at any dataset size.

        Args:
            max_labels: labels per block; :data:`BLOCK_LABELS` by default.
        """
        max_labels = max_labels or BLOCK_LABELS
        total = int(self.offsets[-1])
        cuts = np.searchsorted(self.offsets, np.arange(max_labels, total, max_labels),
                               side="right") - 1
        bounds = np.unique(np.concatenate(([0], cuts, [self.num_images])))
        return zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)

    def _block_pairs(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ``(image, class)`` pairs of images ``[start, stop)``, sorted."""
        offsets = self.offsets[start:stop + 1]
        local = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(offsets))
        keys = np.sort(local * self.num_classes + self.labels[offsets[0]:offsets[-1]])
        # np.sort + a neighbour mask: much faster than np.unique, same result.
        if len(keys):
            keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        return keys // self.num_classes + start, keys % self.num_classes

    def unique_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (image, class) pairs, sorted by image then class.

        Returns:
            ``(image_idx int64[P], class_idx int[P])``, ``class_idx`` in :func:`label_dtype`.
        """
        parts = [self._block_pairs(a, b) for a, b in self.blocks()]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, label_dtype(self.num_classes))
        return (np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]).astype(label_dtype(self.num_classes)))

    def class_counts(self, draws: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and images per class, optionally with image ``i`` drawn ``draws[i]`` times.

        ``boxes_c = sum_i draws_i * n_ic`` and ``images_c = sum_i draws_i * [c in i]``; without
        ``draws`` (every image once) these are the plain ``int64`` counts, otherwise the
        expected counts of an epoch of a re-sampler, ``float64``. Counted block by block
        (:meth:`blocks`), so the extra memory stays small at any scale.

        Args:
            draws: ``[N]`` number (or expected number) of draws of each image.

        Returns:
            ``(boxes[C], images[C])``.
        """
        weights = None if draws is None else np.asarray(draws, dtype=np.float64)
        dtype = np.int64 if weights is None else np.float64
        boxes = np.zeros(self.num_classes, dtype)
        images = np.zeros(self.num_classes, dtype)
        for a, b in self.blocks():
            image_idx, class_idx = self._block_pairs(a, b)
            block = self.labels[self.offsets[a]:self.offsets[b]]
            if weights is None:
                boxes += np.bincount(block, minlength=self.num_classes)
                images += np.bincount(class_idx, minlength=self.num_classes)
            else:
                box_weights = np.repeat(weights[a:b], np.diff(self.offsets[a:b + 1]))
                boxes += np.bincount(block, box_weights, minlength=self.num_classes)
                images += np.bincount(class_idx, weights[image_idx],
                                      minlength=self.num_classes)
        return boxes, images

    def concat(self, other: ImageLabels) -> ImageLabels:
        """The labels of ``self`` followed by the images of ``other``."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot concatenate datasets with {self.num_classes} and "
                f"{other.num_classes} classes")
        offsets = np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]])
        return ImageLabels(np.concatenate([self.labels, other.labels]), offsets,
                           self.num_classes)

    def subset(self, indices: np.ndarray) -> ImageLabels:
        """The images ``indices`` (in that order, repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        lengths = ends - starts
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return ImageLabels(self.labels[gather], offsets, self.num_classes)


@dataclass(frozen=True)
class ClassStats:
    """Per-class counts of a training set.

    Attributes:
        instance_counts: ``int64[C]`` number of boxes of each class.
        image_counts: ``int64[C]`` number of images that contain each class at least once.
        num_images: number of images ``N``.
        num_empty_images: images without any box (background-only).
        classes: class names, when known (empty tuple otherwise).
    """

    instance_counts: np.ndarray
    image_counts: np.ndarray
    num_images: int
    num_empty_images: int
    classes: tuple[str, ...] = ()

    @classmethod
    def from_image_labels(cls, image_labels: ImageLabels,
                          classes: Sequence[str] = ()) -> ClassStats:
        """Count instances and images per class in one vectorised pass."""
        num_classes = image_labels.num_classes
        if classes and len(classes) != num_classes:
            raise ValueError(f"got {len(classes)} class names for {num_classes} classes")
        instance_counts, image_counts = image_labels.class_counts()
        return cls(
            instance_counts=instance_counts,
            image_counts=image_counts,
            num_images=image_labels.num_images,
            num_empty_images=int(np.count_nonzero(
                image_labels.offsets[1:] == image_labels.offsets[:-1])),
            classes=tuple(classes),
        )

    @property
    def num_classes(self) -> int:
        return len(self.instance_counts)

    def counts(self, by: str = "image") -> np.ndarray:
        """Counts per class, ``by`` ``'image'`` or ``'instance'``."""
        if by == "image":
            return self.image_counts
        if by == "instance":
            return self.instance_counts
        raise ValueError(f"by must be 'image' or 'instance', got {by!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "instance_counts": self.instance_counts.tolist(),
            "image_counts": self.image_counts.tolist(),
            "num_images": self.num_images,
            "num_empty_images": self.num_empty_images,
        }


def validate_counts(counts: Sequence[float] | np.ndarray, num_classes: int,
                    name: str = "class_counts") -> np.ndarray:
    """Check a user-given vector of per-class counts and return it as ``float64[C]``.

    Raises:
        ValueError: if the length differs from ``num_classes``, or a count is negative or
            not finite.
    """
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or len(arr) != num_classes:
        raise ValueError(
            f"{name} has {arr.size} entries (shape {arr.shape}) but num_classes={num_classes}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    if np.any(arr < 0):
        bad = np.flatnonzero(arr < 0)
        raise ValueError(f"{name} must be >= 0; classes {bad.tolist()} have {arr[bad].tolist()}")
    return arr


def frequency_groups(counts: Sequence[float] | np.ndarray, rare_max: float = LVIS_RARE_MAX,
                     common_max: float = LVIS_COMMON_MAX) -> np.ndarray:
    """Assign each class to a frequency group by absolute thresholds.

    A class is rare when ``count <= rare_max``, common when ``rare_max < count <= common_max``,
    and frequent otherwise. The defaults are LVIS v1's (counted in training images).

    Args:
        counts: ``[C]`` training counts per class (images or instances).
        rare_max: largest count of a rare class.
        common_max: largest count of a common class.

    Returns:
        ``int64[C]`` with 0 (rare), 1 (common) or 2 (frequent); see :data:`GROUP_NAMES`.

    Raises:
        ValueError: if ``rare_max < 0`` or ``common_max < rare_max``.
    """
    if rare_max < 0:
        raise ValueError(f"rare_max must be >= 0, got {rare_max}")
    if common_max < rare_max:
        raise ValueError(f"common_max ({common_max}) must be >= rare_max ({rare_max})")
    arr = np.asarray(counts)
    return (arr > rare_max).astype(np.int64) + (arr > common_max).astype(np.int64)


def _check_beta(beta: float) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta}")


def effective_number(counts: Sequence[float] | np.ndarray, beta: float) -> np.ndarray:
    """Effective number of samples, ``E_n = (1 - beta^n) / (1 - beta)`` (Cui et al., CVPR 2019).

    ``E_n`` grows like ``n`` for small ``n`` and saturates at ``1 / (1 - beta)``; ``beta = 0``
    gives 1 for every class with at least one sample.

    Raises:
        ValueError: if ``beta`` is outside ``[0, 1)``.
    """
    _check_beta(beta)
    n = np.asarray(counts, dtype=np.float64)
    if beta == 0:
        return (n > 0).astype(np.float64)
    return -np.expm1(n * np.log(beta)) / (1.0 - beta)


def class_balanced_weights(counts: Sequence[float] | np.ndarray, beta: float) -> np.ndarray:
    """Class-balanced weights ``w_c ∝ (1 - beta) / (1 - beta^n_c)``, normalised to sum to ``C``.

    From Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019.
    ``beta = 0`` gives 1 for every class (no re-weighting); ``beta -> 1`` tends to inverse
    class frequency.

    Classes with zero training instances are treated as if they had one: they get the
    largest weight, which is finite. (A zero count would otherwise give an infinite weight.)

    Args:
        counts: ``[C]`` non-negative training counts per class.
        beta: hyper-parameter in ``[0, 1)``.

    Returns:
        ``float64[C]`` weights, summing to ``C``.

    Raises:
        ValueError: if ``beta`` is outside ``[0, 1)`` or a count is negative or not finite.
    """
    _check_beta(beta)
    n = validate_counts(counts, len(np.atleast_1d(np.asarray(counts))), "counts")
    inv = 1.0 / effective_number(np.maximum(n, 1.0), beta)
    return inv * (len(n) / inv.sum())


def dataset_classes(dataset: Any) -> tuple[str, ...]:
    """The class names in a dataset's ``metainfo`` (empty when it has none)."""
    meta = getattr(dataset, "metainfo", None) or {}
    return tuple(meta.get("classes", ()))


def _reads_own_storage(dataset: Any) -> bool:
    """Whether ``dataset`` is an mmengine ``BaseDataset`` read by mmengine's ``get_data_info``.

    Such a dataset's records can be read straight from its storage (no deep copy, no
    ``sample_idx``), and when serialised, its bytes are all there is to its labels.
    """
    from mmengine.dataset import BaseDataset

    return isinstance(dataset, BaseDataset) and (
        type(dataset).get_data_info is BaseDataset.get_data_info)


#: Record addresses converted to Python ints at a time by :func:`_instance_lists`.
_ADDRESS_SLICE = 4096


def _instance_lists(dataset: Any) -> Iterator[list[dict[str, Any]]]:
    """Yield the ``instances`` of every image of an mmengine-style dataset, once each.

    Datasets that keep mmengine's own ``get_data_info`` are read straight from their storage:
    one ``pickle.loads`` per record when serialised, no copy otherwise (``get_data_info``
    deep-copies). Any other dataset goes through its ``get_data_info``.
    """
    if _reads_own_storage(dataset):
        if dataset.serialize_data:
            view = memoryview(dataset.data_bytes)
            start = 0
            # Record ends as Python ints, a slice at a time: all at once they would take
            # 40 bytes per image (68 MB at Objects365 scale).
            for first in range(0, len(dataset.data_address), _ADDRESS_SLICE):
                for end in dataset.data_address[first:first + _ADDRESS_SLICE].tolist():
                    yield pickle.loads(view[start:end]).get("instances", [])
                    start = end
        else:
            for info in dataset.data_list:
                yield info.get("instances", [])
        return
    for idx in range(len(dataset)):
        yield dataset.get_data_info(idx).get("instances", [])


#: ``array`` type codes of the label dtypes of :func:`label_dtype`.
_ARRAY_CODES = {np.dtype(np.int16): "h", np.dtype(np.int32): "i", np.dtype(np.int64): "q"}


def _read_labels(dataset: Any, num_classes: int,
                 include_ignored: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, offsets)`` of a loaded dataset, record by record (see :func:`_instance_lists`).

    Labels accumulate in a compact ``array`` (2 bytes each for up to 32768 classes): no list
    of Python ints, and no copy at the end.
    """
    dtype = label_dtype(num_classes)
    labels = array(_ARRAY_CODES[dtype])
    offsets = np.empty(len(dataset) + 1, dtype=np.int64)
    offsets[0] = 0
    for i, instances in enumerate(_instance_lists(dataset)):
        image = [inst["bbox_label"] for inst in instances
                 if include_ignored or not inst.get("ignore_flag", 0)]
        try:
            labels.extend(image)
        except OverflowError:
            bad = next(x for x in image if not 0 <= x < num_classes)
            raise ValueError(f"label {bad} (image {i}) is outside [0, "
                             f"num_classes={num_classes})") from None
        offsets[i + 1] = len(labels)
    return np.frombuffer(labels, dtype=dtype) if len(labels) else np.zeros(0, dtype), offsets


def _cache_key(dataset: Any, include_ignored: bool) -> str | None:
    """The :mod:`mmimb.label_cache` key of a serialised mmengine dataset, else ``None``."""
    if (label_cache.cache_dir() is None or not _reads_own_storage(dataset)
            or not dataset.serialize_data or len(dataset) == 0):
        return None
    return label_cache.serialized_key(dataset.data_bytes, dataset.data_address,
                                      include_ignored)


def image_labels_from_dataset(dataset: Any, num_classes: int | None = None,
                              include_ignored: bool = False) -> ImageLabels:
    """Read every image's instance labels from an mmdet/mmengine dataset, once per image.

    Supports mmdet detection datasets (``CocoDataset``, ``VOCDataset``, anything derived from
    ``BaseDetDataset``), mmengine's ``ConcatDataset`` (recursively), and wrappers. A wrapper is
    read as it is indexed: one entry per index, so a re-sampling wrapper with
    ``get_data_info`` (mmengine's ``ClassBalancedDataset``, mmimb's ``RepeatFactorDataset``)
    yields its slots, repeats included, which is what a sampler over it needs; a wrapper
    without ``get_data_info`` is read through its ``.dataset``. A dataset created with
    ``lazy_init=True`` is initialised here.

    The labels of a serialised mmengine dataset (every mmdet dataset by default) are stored in
    :mod:`mmimb.label_cache` under a hash of its records' bytes; later reads of the same
    records, in this process or another (every rank, the next run), load them from there
    instead of unpickling every record.

    Args:
        dataset: the dataset.
        num_classes: number of classes; by default the length of ``metainfo['classes']``.
        include_ignored: also count instances whose ``ignore_flag`` is set (crowd boxes);
            mmdet's ``get_cat_ids`` counts them, mmdet's losses do not see them.

    Raises:
        ValueError: if the number of classes is unknown or a label lies outside it.
    """
    if num_classes is None:
        num_classes = len(dataset_classes(dataset))
        if num_classes == 0:
            raise ValueError(
                f"{type(dataset).__name__} has no metainfo['classes']; pass num_classes")
    inner = getattr(dataset, "datasets", None)
    if inner is not None:  # mmengine ConcatDataset
        parts = [image_labels_from_dataset(d, num_classes, include_ignored) for d in inner]
        result = parts[0]
        for part in parts[1:]:
            result = result.concat(part)
        return result
    if hasattr(dataset, "dataset") and not hasattr(dataset, "get_data_info"):
        return image_labels_from_dataset(dataset.dataset, num_classes, include_ignored)
    if hasattr(dataset, "full_init"):
        dataset.full_init()
    key = _cache_key(dataset, include_ignored)
    cached = None if key is None else label_cache.load(key, len(dataset), num_classes)
    if cached is None:
        cached = _read_labels(dataset, num_classes, include_ignored)
        if key is not None:
            label_cache.save(key, *cached)
    return ImageLabels(cached[0], cached[1], num_classes)


def load_coco(ann: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Load a COCO-format annotation file (or pass a loaded dict through)."""
    if isinstance(ann, dict):
        return ann
    with open(ann) as f:
        return json.load(f)


def image_labels_from_coco(ann: str | Path | dict[str, Any],
                           include_crowd: bool = False) -> tuple[ImageLabels, tuple[str, ...]]:
    """Read per-image labels from a COCO-format annotation file.

    Classes are indexed in increasing category-id order (the order pycocotools uses).

    Returns:
        ``(image_labels, class_names)``.

    Raises:
        ValueError: if an annotation names an unknown category or image id.
    """
    coco = load_coco(ann)
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    img_index = {img["id"]: i for i, img in enumerate(coco.get("images", []))}
    if len(img_index) != len(coco.get("images", [])):
        ids = [img["id"] for img in coco["images"]]
        dup = sorted({i for i in ids if ids.count(i) > 1})[:10]
        raise ValueError(f"duplicate image ids in the annotation file: {dup}")
    per_image: list[list[int]] = [[] for _ in img_index]
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0) and not include_crowd:
            continue
        if a["category_id"] not in cat_index:
            raise ValueError(f"annotation {a.get('id')} has unknown category_id "
                             f"{a['category_id']}")
        if a["image_id"] not in img_index:
            raise ValueError(f"annotation {a.get('id')} has unknown image_id {a['image_id']}")
        per_image[img_index[a["image_id"]]].append(cat_index[a["category_id"]])
    names = tuple(c["name"] for c in cats)
    return ImageLabels.from_lists(per_image, max(len(cats), 1)), names


def class_stats(dataset: Any, num_classes: int | None = None,
                include_ignored: bool = False) -> ClassStats:
    """:class:`ClassStats` of the unique training images of an mmdet/mmengine dataset.

    Re-sampling wrappers (anything holding the wrapped dataset in ``.dataset``: mmengine's
    ``ClassBalancedDataset``, mmimb's ``RepeatFactorDataset``, mmdet's ``MultiImageMixDataset``)
    are looked through: losses, metrics and analysis see the data set's own counts, not those
    of one re-sampled epoch. See :func:`image_labels_from_dataset` for what is read.
    """
    while hasattr(dataset, "dataset") and not hasattr(dataset, "datasets"):
        dataset = dataset.dataset
    labels = image_labels_from_dataset(dataset, num_classes, include_ignored)
    classes = dataset_classes(dataset)
    return ClassStats.from_image_labels(
        labels, classes if len(classes) == labels.num_classes else ())


def class_stats_from_coco(ann: str | Path | dict[str, Any]) -> ClassStats:
    """:class:`ClassStats` of a COCO-format annotation file (crowd boxes excluded)."""
    labels, names = image_labels_from_coco(ann)
    return ClassStats.from_image_labels(labels, names)


# --------------------------------------------------------------------------------------------
# Re-sampling statistics: repeat factors, class-aware sampling weights, under-sampling targets.
# The samplers and dataset wrappers of :mod:`mmimb.samplers` and :mod:`mmimb.datasets.wrappers`
# consume these; the random draws themselves live there.

#: How an image's factor is reduced over the distinct classes it contains.
IMAGE_REDUCTIONS: tuple[str, str] = ("max", "mean")


#: The ``oversample_thr`` spelling that lets the data set choose the threshold (the rule of
#: :func:`mmimb.analysis.recommend_repeat_threshold`, applied by
#: :func:`mmimb.samplers.resolve_oversample_thr`).
AUTO_THRESHOLD = "auto"


def _is_real(value: Any) -> bool:
    """True for ``int``/``float`` and numpy numbers, False for ``bool`` and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def check_power(power: float) -> float:
    """Return ``power`` as a ``float`` if it is a finite real number ``>= 0``.

    Raises:
        TypeError: if ``power`` is not a real number (``bool`` included).
        ValueError: if it is negative or not finite.
    """
    if not _is_real(power):
        raise TypeError(f"power must be a finite number >= 0, got {power!r} "
                        f"({type(power).__name__})")
    if not (np.isfinite(power) and power >= 0):
        raise ValueError(f"power must be a finite number >= 0, got {power!r}")
    return float(power)


def check_oversample_thr(oversample_thr: float | str, allow_auto: bool = True) -> float | str:
    """Return ``oversample_thr`` if it is a frequency in ``(0, 1]`` (or ``'auto'``).

    The threshold is a class frequency, a fraction of the images (or of the boxes): above 1
    (indeed above the most frequent class's frequency) every class is over-sampled, which
    defeats the purpose, so values above 1 are refused rather than silently accepted.

    Args:
        oversample_thr: the value to check.
        allow_auto: accept :data:`AUTO_THRESHOLD` (``'auto'``).

    Returns:
        ``oversample_thr`` as a ``float``, or ``'auto'``.

    Raises:
        TypeError: if it is neither a real number nor a string (``None``, a list, a ``bool``).
        ValueError: if it is a string other than ``'auto'`` (or ``'auto'`` where not allowed),
            or a number outside ``(0, 1]`` or not finite.
    """
    choices = "a number in (0, 1] or 'auto'" if allow_auto else "a number in (0, 1]"
    if isinstance(oversample_thr, str):
        if oversample_thr == AUTO_THRESHOLD and allow_auto:
            return oversample_thr
        hint = ("; resolve 'auto' first with mmimb.samplers.resolve_oversample_thr"
                if oversample_thr == AUTO_THRESHOLD else "")
        raise ValueError(f"oversample_thr must be {choices}, got {oversample_thr!r}{hint}")
    if not _is_real(oversample_thr):
        raise TypeError(f"oversample_thr must be {choices}, got {oversample_thr!r} "
                        f"({type(oversample_thr).__name__})")
    if not (np.isfinite(oversample_thr) and oversample_thr > 0):
        raise ValueError(f"oversample_thr must be {choices}, got {oversample_thr!r}")
    if oversample_thr > 1:
        raise ValueError(f"oversample_thr must be {choices}, got {oversample_thr!r}: it is a "
                         "class frequency, a fraction of the images (or boxes), which cannot "
                         "exceed 1; above the most frequent class's frequency every class is "
                         "over-sampled")
    return float(oversample_thr)


def validate_repeat_factor_args(oversample_thr: float | str, power: float, by: str = "image",
                                reduce: str = "max") -> None:
    """Check the arguments of :func:`class_repeat_factors` and :func:`image_repeat_factors`.

    Called by the samplers and wrappers at construction, before any annotation is loaded;
    ``oversample_thr='auto'`` is accepted here (the samplers resolve it once the labels are
    read), but only with ``by='image'`` and ``power > 0``, where the rule is defined.

    Raises:
        TypeError: if ``oversample_thr`` or ``power`` is not a number (``'auto'`` aside).
        ValueError: if ``oversample_thr`` is outside ``(0, 1]``, ``power < 0``, either is not
            finite, ``by`` or ``reduce`` is not one of the valid choices, or ``'auto'`` is
            combined with ``by='instance'`` or ``power=0``.
    """
    check_oversample_thr(oversample_thr)
    check_power(power)
    if by not in ("image", "instance"):
        raise ValueError(f"by must be 'image' or 'instance', got {by!r}")
    if reduce not in IMAGE_REDUCTIONS:
        raise ValueError(f"reduce must be one of {IMAGE_REDUCTIONS}, got {reduce!r}")
    if oversample_thr == AUTO_THRESHOLD and by != "image":
        raise ValueError(f"oversample_thr='auto' is defined on image frequencies (by='image'), "
                         f"got by={by!r}: give oversample_thr as a number in (0, 1]")
    if oversample_thr == AUTO_THRESHOLD and power == 0:
        raise ValueError("oversample_thr='auto' needs power > 0 (it picks the threshold that "
                         "repeats the rarest class up to 10 times, and power=0 repeats nothing):"
                         " give power > 0, or drop the re-sampling")


def class_frequencies(stats: ClassStats, by: str = "image") -> np.ndarray:
    """Frequency ``f_c`` of every class.

    ``by='image'``: the fraction of training images that contain class ``c`` (LVIS's
    definition). ``by='instance'``: the fraction of all training boxes that belong to ``c``.

    Returns:
        ``float64[C]`` in ``[0, 1]``.

    Raises:
        ValueError: if the dataset has no images, or ``by`` is invalid.
    """
    counts = stats.counts(by).astype(np.float64)
    if stats.num_images == 0:
        raise ValueError("dataset has no images: class frequencies are undefined")
    total = float(stats.num_images) if by == "image" else counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def class_repeat_factors(stats: ClassStats, oversample_thr: float, power: float = 0.5,
                         by: str = "image") -> np.ndarray:
    """Per-class repeat factors ``r_c = max(1, (t / f_c) ** p)``.

    From Gupta et al., "LVIS: A Dataset for Large Vocabulary Instance Segmentation", CVPR 2019
    (``p = 0.5``, ``f_c`` the fraction of images containing ``c``): classes rarer than the
    threshold ``t`` are over-sampled, the others are left alone. ``p = 0.5`` computes the
    square root with ``np.sqrt``, exactly as mmengine's ``ClassBalancedDataset`` does.
    A class without any training image gets ``r_c = 1`` (no image carries it anyway).

    Args:
        stats: class counts of the training set.
        oversample_thr: frequency threshold ``t`` in ``(0, 1]`` (a number: ``'auto'`` is
            resolved by the samplers, :func:`mmimb.samplers.resolve_oversample_thr`).
        power: exponent ``p >= 0``; ``0`` disables re-sampling.
        by: ``'image'`` or ``'instance'``, see :func:`class_frequencies`.

    Returns:
        ``float64[C]``, every value ``>= 1``.

    Raises:
        TypeError: if ``oversample_thr`` or ``power`` is not a number.
        ValueError: on invalid arguments (naming the argument) or an empty dataset.
    """
    check_oversample_thr(oversample_thr, allow_auto=False)
    validate_repeat_factor_args(oversample_thr, power, by)
    freq = class_frequencies(stats, by)
    ratio = np.divide(oversample_thr, freq, out=np.ones_like(freq), where=freq > 0)
    scaled = np.sqrt(ratio) if power == 0.5 else ratio ** power
    return np.where(freq > 0, np.maximum(1.0, scaled), 1.0)


def image_repeat_factors(image_labels: ImageLabels, class_factors: np.ndarray,
                         reduce: str = "max") -> np.ndarray:
    """Per-image factor: the max (or mean) of ``class_factors`` over the image's classes.

    ``r_i = max_{c in image i} r_c`` is LVIS's rule (an image is repeated as often as its rarest
    class asks); ``'mean'`` averages over the image's *distinct* classes. Images without boxes
    get 1.

    Args:
        image_labels: labels of the ``N`` images.
        class_factors: ``[C]`` per-class factors, e.g. from :func:`class_repeat_factors`.
        reduce: ``'max'`` or ``'mean'``.

    Returns:
        ``float64[N]``.

    Raises:
        ValueError: if ``reduce`` is invalid or ``class_factors`` has the wrong length.
    """
    if reduce not in IMAGE_REDUCTIONS:
        raise ValueError(f"reduce must be one of {IMAGE_REDUCTIONS}, got {reduce!r}")
    factors = validate_counts(class_factors, image_labels.num_classes, "class_factors")
    out = np.ones(image_labels.num_images, dtype=np.float64)
    if reduce == "max":
        # Duplicated labels do not change a max, so no need for the distinct pairs here.
        for a, b in image_labels.blocks():
            offsets = image_labels.offsets[a:b + 1]
            nonempty = np.flatnonzero(np.diff(offsets) > 0)
            if len(nonempty):
                block = factors[image_labels.labels[offsets[0]:offsets[-1]]]
                out[a + nonempty] = np.maximum.reduceat(block, offsets[nonempty] - offsets[0])
        return out
    image_idx, class_idx = image_labels.unique_pairs()
    sums = np.bincount(image_idx, weights=factors[class_idx], minlength=len(out))
    num = np.bincount(image_idx, minlength=len(out))
    np.divide(sums, num, out=out, where=num > 0)
    return out


def class_aware_weights(image_labels: ImageLabels, power: float, by: str = "image",
                        reduce: str = "max") -> np.ndarray:
    """Image sampling weights of class-aware sampling with a power knob ``q``.

    Every class gets the weight ``w_c = f_c ** -q`` (:func:`class_frequencies`), and image ``i``
    the weight ``w_i = max_{c in i} w_c`` (or the mean); images without boxes form one more
    class, "background", whose frequency is the fraction of such images. Then
    ``P(i) = w_i / sum_j w_j``. ``q = 0`` gives every image the weight 1 and samples images
    uniformly; ``q = 1`` makes every class equally likely when each image holds one class (the
    multi-label case approximates it), which is the class-aware sampling of Shen et al.,
    "Relay Backpropagation", ECCV 2016, as in mmdet's ``ClassAwareSampler``; ``q = 0.5`` is the
    square-root sampling of Mahajan et al., ECCV 2018.

    Returns:
        ``float64[N]`` weights ``w_i >= 1`` (exactly 1 everywhere when ``q = 0``).

    Raises:
        ValueError: if ``power`` is negative or not finite, ``by``/``reduce`` are invalid,
            or there are no images.
    """
    check_power(power)
    stats = ClassStats.from_image_labels(image_labels)
    # With t = 1 the clamp max(1, .) of the repeat factor is inactive (f_c <= 1).
    weights = image_repeat_factors(
        image_labels, class_repeat_factors(stats, 1.0, power, by), reduce)
    if stats.num_empty_images:
        empty = np.diff(image_labels.offsets) == 0
        weights[empty] = (stats.num_empty_images / stats.num_images) ** -power
    return weights


#: ``sampling_strategy`` strings of imbalanced-learn's under-samplers and the classes they reduce.
UNDERSAMPLING_STRATEGIES: tuple[str, ...] = ("auto", "not minority", "majority", "not majority",
                                             "all")


def _strategy_dict_targets(counts: np.ndarray, classes: Sequence[str],
                           strategy: dict[Any, Any]) -> np.ndarray:
    targets = counts.copy()
    for key, value in strategy.items():
        if isinstance(key, str):
            if key not in classes:
                raise ValueError(
                    f"sampling_strategy names class {key!r}, which is not in the dataset's "
                    f"classes ({len(classes)} classes, e.g. {list(classes[:5])})")
            c = list(classes).index(key)
        elif isinstance(key, int | np.integer) and 0 <= key < len(counts):
            c = int(key)
        else:
            raise ValueError(f"sampling_strategy key {key!r} is neither a class name nor a "
                             f"class index in [0, {len(counts)})")
        if not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"sampling_strategy[{key!r}] must be an int >= 0, got {value!r}")
        if value > counts[c]:
            raise ValueError(
                f"sampling_strategy asks for {value} images of class {key!r}, which has only "
                f"{counts[c]}: under-sampling cannot increase a class")
        targets[c] = value
    return targets


def undersampling_targets(stats: ClassStats, sampling_strategy: Any = "auto") -> np.ndarray:
    """Target number of images per class, with imbalanced-learn's ``sampling_strategy`` rules.

    Counts are images that contain the class (``stats.image_counts``); the minority and
    majority classes are the classes with the fewest and most images among those present.

    - ``float`` ``a`` in ``(0, 1]``: after re-sampling, ``n_minority / n_c >= a`` for every
      class: each class with more than ``n_minority / a`` images is reduced to
      ``floor(n_minority / a)``, the others are kept. (imbalanced-learn accepts a float for
      binary targets only; this is its definition applied to every class.)
    - ``'auto'`` or ``'not minority'``: every class except the minority is reduced to the
      minority's count; ``'majority'``: only the majority class; ``'not majority'``: every
      class except the majority; ``'all'``: every class. When several classes tie for the most
      images, the majority class is the first of them in class-index order, as in
      imbalanced-learn (``max(counts, key=counts.get)`` over its classes in sorted order):
      counts ``[5, 5, 2]`` give ``[2, 5, 2]`` with ``'majority'`` and ``[5, 2, 2]`` with
      ``'not majority'``.
    - ``dict``: class name or index -> target count; unnamed classes are kept.
    - callable: called with ``{class name (or index when names are unknown): image count}``,
      returns such a dict.

    Returns:
        ``int64[C]`` targets, ``targets[c] <= stats.image_counts[c]``; a class is reduced
        exactly when its target is below its count.

    Raises:
        ValueError: naming ``sampling_strategy``, if it is of an unknown kind, ``'minority'``
            (over-sampling only), a float outside ``(0, 1]``, names an unknown class, or asks
            for more images of a class than the dataset has (that would be over-sampling).
    """
    counts = stats.image_counts.astype(np.int64)
    present = np.flatnonzero(counts > 0)
    if len(present) == 0:
        raise ValueError("sampling_strategy cannot be applied: no class has any image")
    n_min = int(counts[present].min())
    # The first class of a tie, as imbalanced-learn's max() over its sorted classes.
    majority = int(present[np.argmax(counts[present])])
    if callable(sampling_strategy):
        keys: tuple[Any, ...] = stats.classes or tuple(range(len(counts)))
        result = sampling_strategy(dict(zip(keys, counts.tolist(), strict=True)))
        if not isinstance(result, dict):
            raise ValueError("a callable sampling_strategy must return a dict of class -> "
                             f"count, got {type(result).__name__}")
        return _strategy_dict_targets(counts, stats.classes, result)
    if isinstance(sampling_strategy, dict):
        return _strategy_dict_targets(counts, stats.classes, sampling_strategy)
    if isinstance(sampling_strategy, str):
        if sampling_strategy == "minority":
            raise ValueError("sampling_strategy='minority' asks to over-sample the minority "
                             f"class; under-sampling supports {UNDERSAMPLING_STRATEGIES}")
        if sampling_strategy not in UNDERSAMPLING_STRATEGIES:
            raise ValueError(f"sampling_strategy must be a float, a dict, a callable or one "
                             f"of {UNDERSAMPLING_STRATEGIES}, got {sampling_strategy!r}")
        reduce = counts > 0
        if sampling_strategy in ("auto", "not minority"):
            reduce &= counts > n_min
        elif sampling_strategy == "majority":
            reduce &= np.arange(len(counts)) == majority
        elif sampling_strategy == "not majority":
            reduce[majority] = False
        return np.where(reduce, np.minimum(counts, n_min), counts)
    if isinstance(sampling_strategy, float | int) and not isinstance(sampling_strategy, bool):
        if not 0 < sampling_strategy <= 1:
            raise ValueError(f"a float sampling_strategy is the ratio n_minority / n_class "
                             f"after re-sampling and must lie in (0, 1], got "
                             f"{sampling_strategy}")
        return np.minimum(counts, int(np.floor(n_min / sampling_strategy)))
    raise ValueError(f"sampling_strategy must be a float, a dict, a callable or one of "
                     f"{UNDERSAMPLING_STRATEGIES}, got {sampling_strategy!r}")
