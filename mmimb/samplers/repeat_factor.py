"""Repeat-factor sampling (Gupta et al., "LVIS: A Dataset for Large Vocabulary Instance
Segmentation", CVPR 2019), as a sampler.

Every image ``i`` is drawn ``r_i`` times per epoch on average, where
``r_i = max_{c in i} r_c`` and ``r_c = max(1, (t / f_c) ** p)``, ``f_c`` being the fraction of
training images that contain class ``c`` (see :func:`mmimb.stats.class_repeat_factors`).
:class:`mmimb.datasets.wrappers.RepeatFactorDataset` offers the same as a dataset wrapper.

Shape shorthand: ``N`` images, ``C`` classes, ``M`` draws in an epoch.
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
    check_rounding,
    read_image_labels,
    repeat_indices,
    round_factors,
)
from mmimb.stats import (
    AUTO_THRESHOLD,
    ClassStats,
    class_repeat_factors,
    image_repeat_factors,
    validate_repeat_factor_args,
)


def resolve_oversample_thr(oversample_thr: float | str, stats: ClassStats,
                           power: float = 0.5) -> float:
    """The threshold ``t`` to use: ``oversample_thr`` itself, or the one ``'auto'`` stands for.

    ``'auto'`` applies the rule of ``mmimb-analyze --resample oversample_thr=auto``
    (:func:`mmimb.analysis.recommend_repeat_threshold`, the one place where it is written):
    ``t = f_min * r_max ** (1 / p)`` with ``r_max = 10``, so that the rarest class (image
    frequency ``f_min``) is repeated ``r_max`` times, capped at ``f_max`` so that the most
    frequent class is never repeated. With ``p = 0.5`` on LVIS v1 this is LVIS's ``1e-3``.

    Args:
        oversample_thr: a frequency in ``(0, 1]`` or ``'auto'``.
        stats: class counts of the training set (image frequencies).
        power: the sampler's exponent ``p`` (``> 0`` with ``'auto'``).

    Returns:
        ``t`` in ``(0, 1]``.

    Raises:
        TypeError: if ``oversample_thr`` or ``power`` is not a number (``'auto'`` aside).
        ValueError: if ``oversample_thr`` is outside ``(0, 1]`` or another string, ``'auto'``
            comes with ``power = 0``, or no class has an image.
    """
    validate_repeat_factor_args(oversample_thr, power)
    if oversample_thr != AUTO_THRESHOLD:
        return float(oversample_thr)
    # Imported here: mmimb.analysis imports the samplers.
    from mmimb.analysis.summary import DEFAULT_MAX_REPEAT, recommend_repeat_threshold

    return recommend_repeat_threshold(stats, DEFAULT_MAX_REPEAT, power).value


def dataset_repeat_factors(dataset: Any, oversample_thr: float | str, power: float = 0.5,
                           by: str = "image", reduce: str = "max",
                           include_ignored: bool = INCLUDE_IGNORED_DEFAULT,
                           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Class and image repeat factors of a dataset, reading its labels once.

    Args:
        dataset: an mmdet/mmengine dataset (anything :func:`mmimb.stats.image_labels_from_dataset`
            reads, e.g. ``CocoDataset`` or a ``ConcatDataset``).
        oversample_thr: frequency threshold ``t`` in ``(0, 1]``, or ``'auto'``
            (:func:`resolve_oversample_thr`).
        power: exponent ``p >= 0``.
        by: class frequency over ``'image'`` or ``'instance'``.
        reduce: image factor from its classes', ``'max'`` or ``'mean'``.
        include_ignored: also count boxes whose ``ignore_flag`` is set (crowd boxes), as
            mmengine's ``ClassBalancedDataset`` does; by default they are left out, as mmdet's
            losses leave them out.

    Returns:
        ``(class_factors float64[C], image_factors float64[N], t)``, ``t`` the threshold used
        (the number ``'auto'`` chose).

    Raises:
        TypeError: if ``oversample_thr`` or ``power`` is not a number (``'auto'`` aside), or
            ``include_ignored`` is not a bool.
        ValueError: on invalid arguments, naming them, or an empty dataset.
    """
    validate_repeat_factor_args(oversample_thr, power, by, reduce)
    labels = read_image_labels(dataset, check_bool(include_ignored, "include_ignored"))
    stats = ClassStats.from_image_labels(labels)
    threshold = resolve_oversample_thr(oversample_thr, stats, power)
    class_factors = class_repeat_factors(stats, threshold, power, by)
    return class_factors, image_repeat_factors(labels, class_factors, reduce), threshold


@DATA_SAMPLERS.register_module()
class RepeatFactorSampler(ResamplingSampler):
    """Sampler that draws image ``i`` on average ``r_i`` times per epoch (LVIS repeat factors).

    With ``rounding='stochastic'`` (the default), image ``i`` is drawn
    ``floor(r_i) + Bernoulli(r_i - floor(r_i))`` times, redrawn every epoch from
    ``(seed, epoch)``: over epochs every image is seen exactly ``r_i`` times per epoch on
    average, and the expected epoch length is ``sum_i r_i``. ``'ceil'`` with
    ``include_ignored=True`` reproduces the repeat counts of mmengine's ``ClassBalancedDataset``
    exactly (epochs longer than intended; mmengine counts crowd boxes, see ``include_ignored``);
    ``'floor'`` and ``'round'`` are deterministic too. The epoch is shuffled and split across
    ranks as described in :class:`~mmimb.samplers._common.ResamplingSampler`.

    Config example::

        train_dataloader = dict(
            sampler=dict(type='RepeatFactorSampler', oversample_thr=1e-3))

    Args:
        dataset: the training set.
        oversample_thr: frequency threshold ``t`` in ``(0, 1]``; classes in fewer than this
            fraction of the images are over-sampled (LVIS uses ``1e-3``). ``'auto'`` picks
            ``t`` from the data set by the rule of ``mmimb-analyze --resample``
            (:func:`resolve_oversample_thr`: the rarest class repeated 10 times, capped so
            that the most frequent class is not repeated); it needs ``by='image'`` and
            ``power > 0``. Values above 1 are refused: a fraction cannot exceed 1.
        power: exponent ``p`` (``0.5`` in the paper).
        by: class frequency counted over ``'image'`` (the paper) or ``'instance'``.
        reduce: image factor from its classes' factors, ``'max'`` (the paper) or ``'mean'``.
        rounding: ``'stochastic'``, ``'ceil'``, ``'floor'`` or ``'round'``.
        seed: the shared seed; ``None`` draws one and broadcasts it from rank 0.
        shuffle: shuffle each epoch.
        include_ignored: also count boxes whose ``ignore_flag`` is set (the crowd boxes that
            mmdet's ``CocoDataset`` keeps with ``ignore_flag=1``) in the class frequencies and
            image factors. ``False`` (default): only the boxes that the losses train on count.
            ``True``: as mmengine's ``ClassBalancedDataset`` (``get_cat_ids`` lists them).
        infinite: go through epochs without end; only for ``IterBasedTrainLoop`` (with
            ``EpochBasedTrainLoop`` the first epoch would never end, so that combination is
            refused, see :class:`~mmimb.samplers._common.ResamplingSampler`).

    Attributes:
        class_factors: ``float64[C]`` factor ``r_c`` of every class.
        repeat_factors: ``float64[N]`` factor ``r_i`` of every image.
        threshold: the threshold ``t`` in use (the number that ``'auto'`` chose).

    Raises:
        TypeError: if ``oversample_thr`` or ``power`` is not a number (``'auto'`` aside), or
            ``shuffle``/``infinite``/``include_ignored`` is not a bool.
        ValueError: if ``oversample_thr`` is outside ``(0, 1]`` or a string other than
            ``'auto'``, ``power < 0``, ``by``, ``reduce`` or ``rounding`` is unknown, the
            dataset is empty, or ``infinite=True`` is built by an ``EpochBasedTrainLoop``.
    """

    def __init__(self, dataset: Sized, oversample_thr: float | str = 1e-3, power: float = 0.5,
                 by: str = "image", reduce: str = "max", rounding: str = "stochastic",
                 seed: int | None = None, shuffle: bool = True, infinite: bool = False,
                 include_ignored: bool = INCLUDE_IGNORED_DEFAULT) -> None:
        self.rounding = check_rounding(rounding)
        self.include_ignored = check_bool(include_ignored, "include_ignored")
        super().__init__(dataset, seed=seed, shuffle=shuffle, infinite=infinite)
        self.class_factors, self.repeat_factors, self.threshold = dataset_repeat_factors(
            dataset, oversample_thr, power, by, reduce, self.include_ignored)

    @property
    def expected_length(self) -> float:
        """Expected number of draws per epoch, over all ranks (``sum_i r_i`` if stochastic)."""
        if self.rounding == "stochastic":
            return float(self.repeat_factors.sum())
        return float(round_factors(self.repeat_factors, self.rounding).sum())

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return repeat_indices(round_factors(self.repeat_factors, self.rounding, rng))
