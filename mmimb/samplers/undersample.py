"""Under-sampling of majority classes for multi-label detection images, redrawn every epoch.

The target number of images per class follows imbalanced-learn's ``sampling_strategy``
(:func:`mmimb.stats.undersampling_targets`). Detection images hold several classes, so the
draw works on images. Every epoch:

1. An image that contains a class that is *not* reduced is always kept (it cannot be dropped
   without losing that class's boxes).
2. Background-only images are kept by an explicit ratio or count, drawn uniformly.
3. Every reduced class ``c`` draws ``target_c`` of its ``n_c`` images uniformly without
   replacement, and every drawn image is kept. The draws of all classes follow one random
   order of the images (each class takes its first ``target_c`` images in that order), so that
   classes that share images also share their draws and keep fewer images in all.

Hence every reduced class keeps at least its target (more when the images kept for other
classes, or the protected ones, contain it too), single-label datasets keep exactly the targets,
and every image is kept with probability at least ``target_c / n_c`` for each of its classes:
the subset is redrawn from ``(seed, epoch)`` every epoch, so no image is lost for good. (Counting
the images kept in steps 1-2 towards the targets would cut the excess, but would drop for ever
the images of a class that the protected images already fill.)

With ``redraw=False`` the subset of epoch 0 is kept for the whole training (only its order
changes from epoch to epoch): one fixed balanced subset per seed, the training set of one member
of an EasyEnsemble (Liu, Wu & Zhou, "Exploratory Undersampling for Class-Imbalance Learning",
IEEE TSMC-B 2009; :mod:`mmimb.strategies.ensemble`).

Shape shorthand: ``N`` images, ``C`` classes, ``P`` distinct (image, class) pairs.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import numpy as np
from mmdet.registry import DATA_SAMPLERS

from mmimb.samplers._common import (
    INCLUDE_IGNORED_DEFAULT,
    ResamplingSampler,
    check_bool,
    epoch_rng,
    read_image_labels,
)
from mmimb.stats import ClassStats, ImageLabels, undersampling_targets


def _distinct_labels(labels: ImageLabels) -> ImageLabels:
    """The distinct classes of every image (``P`` labels)."""
    image_idx, class_idx = labels.unique_pairs()
    offsets = np.zeros(labels.num_images + 1, dtype=np.int64)
    np.cumsum(np.bincount(image_idx, minlength=labels.num_images), out=offsets[1:])
    return ImageLabels(class_idx, offsets, labels.num_classes)


def background_keep_count(num_background: int, background_ratio: float | None,
                          background_count: int | None) -> int:
    """How many of the ``num_background`` background-only images an epoch keeps.

    Args:
        num_background: background-only images in the dataset.
        background_ratio: fraction to keep, in ``[0, 1]``; rounded to the nearest count.
        background_count: number to keep, at most ``num_background``.

    Returns:
        The count; all of them when neither argument is given.

    Raises:
        ValueError: if both are given, the ratio is outside ``[0, 1]``, or the count is negative
            or larger than ``num_background``.
    """
    if background_ratio is not None and background_count is not None:
        raise ValueError("give background_ratio or background_count, not both (got "
                         f"{background_ratio!r} and {background_count!r})")
    if background_count is not None:
        if not isinstance(background_count, int) or not 0 <= background_count <= num_background:
            raise ValueError(f"background_count must be an int in [0, {num_background}] (the "
                             f"number of background-only images), got {background_count!r}")
        return background_count
    ratio = 1.0 if background_ratio is None else background_ratio
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"background_ratio must lie in [0, 1], got {background_ratio!r}")
    return int(np.floor(ratio * num_background + 0.5))


@DATA_SAMPLERS.register_module()
class UndersampleSampler(ResamplingSampler):
    """Sampler that draws, every epoch, a subset of images that under-samples majority classes.

    See the module docstring for the draw. Each epoch is a fresh subset (a function of
    ``(seed, epoch)``; with ``redraw=False``, the subset of epoch 0), shuffled and split across
    ranks as in :class:`~mmimb.samplers._common.ResamplingSampler`; each image appears at most
    once per epoch. :meth:`report` tells how many images of each class an epoch kept.

    Config example::

        train_dataloader = dict(sampler=dict(
            type='UndersampleSampler', sampling_strategy=0.1, background_ratio=0.5))

    Args:
        dataset: the training set.
        sampling_strategy: target images per class, in imbalanced-learn's terms: a float ratio
            ``n_minority / n_c`` in ``(0, 1]``, ``'auto'``/``'not minority'``, ``'majority'``,
            ``'not majority'``, ``'all'``, a dict of class name (or index) to count, or a
            callable that maps ``{class: image count}`` to such a dict
            (see :func:`mmimb.stats.undersampling_targets`).
        background_ratio: fraction of the background-only images to keep each epoch.
        background_count: number of background-only images to keep each epoch (instead of a
            ratio). With neither, all are kept.
        seed: the shared seed; ``None`` draws one and broadcasts it from rank 0.
        shuffle: shuffle each epoch.
        infinite: go through epochs without end (iteration-based training).
        redraw: draw a new subset every epoch (default); ``False`` keeps the subset of epoch 0
            for good and only reshuffles it.
        include_ignored: also count boxes whose ``ignore_flag`` is set (crowd boxes): an image
            then counts for the classes of its crowd boxes too, in the counts, the targets and
            the draw. ``False`` (default): only the boxes the losses train on.

    Attributes:
        targets: ``int64[C]`` target images per class; classes with ``targets < image_counts``
            are reduced.
        stats: the dataset's :class:`~mmimb.stats.ClassStats`.

    Raises:
        TypeError: if ``shuffle``, ``infinite``, ``redraw`` or ``include_ignored`` is not a
            bool.
        ValueError: on an invalid ``sampling_strategy`` (one that names unknown classes or asks
            to increase a class included), invalid background arguments, an empty dataset, or
            arguments that leave no image to sample.
    """

    def __init__(self, dataset: Sized, sampling_strategy: Any = "auto",
                 background_ratio: float | None = None, background_count: int | None = None,
                 seed: int | None = None, shuffle: bool = True, infinite: bool = False,
                 redraw: bool = True, include_ignored: bool = INCLUDE_IGNORED_DEFAULT) -> None:
        self.include_ignored = check_bool(include_ignored, "include_ignored")
        super().__init__(dataset, seed=seed, shuffle=shuffle, infinite=infinite)
        self.redraw = check_bool(redraw, "redraw")
        self._fixed_subset: np.ndarray | None = None
        labels = read_image_labels(dataset, self.include_ignored)
        classes = tuple(getattr(dataset, "metainfo", {}).get("classes", ()))
        self.stats = ClassStats.from_image_labels(
            labels, classes if len(classes) == labels.num_classes else ())
        self.targets = undersampling_targets(self.stats, sampling_strategy)
        self._distinct = _distinct_labels(labels)
        self._pair_images = self._distinct.image_index
        reduced = self.targets < self.stats.image_counts
        # Images holding a class that is not reduced are never dropped.
        self._protected = np.zeros(labels.num_images, dtype=bool)
        self._protected[self._pair_images[~reduced[self._distinct.labels]]] = True
        self._background = np.flatnonzero(np.diff(labels.offsets) == 0)
        self._num_background_kept = background_keep_count(
            len(self._background), background_ratio, background_count)
        if not (self._protected.any() or self.targets.any() or self._num_background_kept):
            raise ValueError("sampling_strategy and the background arguments leave no image "
                             "to sample")
        # The (image, class) pairs of the reduced classes, grouped by class, and for each pair
        # the position of its class's first pair.
        order = np.argsort(self._distinct.labels, kind="stable")
        order = order[reduced[self._distinct.labels[order]]]
        self._reduced_images = self._pair_images[order]
        self._reduced_classes = self._distinct.labels[order]
        starts = np.concatenate([[0], np.cumsum(self.stats.image_counts * reduced)[:-1]])
        self._pair_rank0 = starts[self._reduced_classes]

    def _class_counts(self, images: np.ndarray) -> np.ndarray:
        """``int64[C]``: how many of ``images`` (distinct) contain each class."""
        return np.bincount(self._distinct.subset(images).labels,
                           minlength=self._distinct.num_classes)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.redraw:
            return self._draw_subset(rng)
        if self._fixed_subset is None:
            self._fixed_subset = self._draw_subset(epoch_rng(self.seed, 0))
        return self._fixed_subset

    def _draw_subset(self, rng: np.random.Generator) -> np.ndarray:
        kept = self._protected.copy()
        kept[rng.choice(self._background, self._num_background_kept, replace=False)] = True
        priority = rng.permutation(len(kept))
        # Sort each class's pairs by the images' priority; a pair's rank within its class then
        # says whether the class draws that image.
        order = np.lexsort((priority[self._reduced_images], self._reduced_classes))
        rank = np.arange(len(order)) - self._pair_rank0
        classes = self._reduced_classes  # unchanged by the sort: it is grouped by class
        kept[self._reduced_images[order][rank < self.targets[classes]]] = True
        return np.flatnonzero(kept)

    def kept_counts(self, epoch: int | None = None) -> np.ndarray:
        """``int64[C]``: images of each class in the subset of ``epoch`` (current by default)."""
        return self._class_counts(self.epoch_indices(epoch))

    def report(self, epoch: int | None = None) -> dict[str, Any]:
        """Per-class image counts before and after under-sampling, for logging or JSON.

        Returns:
            ``classes``, ``image_counts``, ``targets``, ``kept_counts`` (lists over classes)
            and ``num_images``, ``num_kept``, ``num_background``, ``num_background_kept``.
        """
        indices = self.epoch_indices(epoch)
        return {
            "epoch": self.epoch if epoch is None else epoch,
            "classes": list(self.stats.classes),
            "image_counts": self.stats.image_counts.tolist(),
            "targets": self.targets.tolist(),
            "kept_counts": self._class_counts(indices).tolist(),
            "num_images": self.stats.num_images,
            "num_kept": len(indices),
            "num_background": len(self._background),
            "num_background_kept": self._num_background_kept,
        }
