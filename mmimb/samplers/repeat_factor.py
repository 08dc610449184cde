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
    ResamplingSampler,
    check_rounding,
    read_image_labels,
    repeat_indices,
    round_factors,
)
from mmimb.stats import (
    ClassStats,
    class_repeat_factors,
    image_repeat_factors,
    validate_repeat_factor_args,
)


def dataset_repeat_factors(dataset: Any, oversample_thr: float, power: float = 0.5,
                           by: str = "image", reduce: str = "max"
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Class and image repeat factors of a dataset, reading its labels once.

    Args:
        dataset: an mmdet/mmengine dataset (anything :func:`mmimb.stats.image_labels_from_dataset`
            reads, e.g. ``CocoDataset`` or a ``ConcatDataset``).
        oversample_thr: frequency threshold ``t > 0``.
        power: exponent ``p >= 0``.
        by: class frequency over ``'image'`` or ``'instance'``.
        reduce: image factor from its classes', ``'max'`` or ``'mean'``.

    Returns:
        ``(class_factors float64[C], image_factors float64[N])``.

    Raises:
        ValueError: on invalid arguments, naming them, or an empty dataset.
    """
    validate_repeat_factor_args(oversample_thr, power, by, reduce)
    labels = read_image_labels(dataset)
    class_factors = class_repeat_factors(ClassStats.from_image_labels(labels), oversample_thr,
                                         power, by)
    return class_factors, image_repeat_factors(labels, class_factors, reduce)


@DATA_SAMPLERS.register_module()
class RepeatFactorSampler(ResamplingSampler):
    """Sampler that draws image ``i`` on average ``r_i`` times per epoch (LVIS repeat factors).

    With ``rounding='stochastic'`` (the default), image ``i`` is drawn
    ``floor(r_i) + Bernoulli(r_i - floor(r_i))`` times, redrawn every epoch from
    ``(seed, epoch)``: over epochs every image is seen exactly ``r_i`` times per epoch on
    average, and the expected epoch length is ``sum_i r_i``. ``'ceil'`` reproduces the repeat
    counts of mmengine's ``ClassBalancedDataset`` (epochs longer than intended);
    ``'floor'`` and ``'round'`` are deterministic too. The epoch is shuffled and split across
    ranks as described in :class:`~mmimb.samplers._common.ResamplingSampler`.

    Config example::

        train_dataloader = dict(
            sampler=dict(type='RepeatFactorSampler', oversample_thr=1e-3))

    Args:
        dataset: the training set.
        oversample_thr: frequency threshold ``t``; classes in fewer than this fraction of the
            images are over-sampled (LVIS uses ``1e-3``).
        power: exponent ``p`` (``0.5`` in the paper).
        by: class frequency counted over ``'image'`` (the paper) or ``'instance'``.
        reduce: image factor from its classes' factors, ``'max'`` (the paper) or ``'mean'``.
        rounding: ``'stochastic'``, ``'ceil'``, ``'floor'`` or ``'round'``.
        seed: the shared seed; ``None`` draws one and broadcasts it from rank 0.
        shuffle: shuffle each epoch.
        infinite: go through epochs without end (iteration-based training).

    Attributes:
        class_factors: ``float64[C]`` factor ``r_c`` of every class.
        repeat_factors: ``float64[N]`` factor ``r_i`` of every image.

    Raises:
        ValueError: if ``oversample_thr <= 0``, ``power < 0``, ``by``, ``reduce`` or
            ``rounding`` is unknown, or the dataset is empty.
    """

    def __init__(self, dataset: Sized, oversample_thr: float = 1e-3, power: float = 0.5,
                 by: str = "image", reduce: str = "max", rounding: str = "stochastic",
                 seed: int | None = None, shuffle: bool = True, infinite: bool = False) -> None:
        self.rounding = check_rounding(rounding)
        self.class_factors, self.repeat_factors = dataset_repeat_factors(
            dataset, oversample_thr, power, by, reduce)
        super().__init__(dataset, seed=seed, shuffle=shuffle, infinite=infinite)

    @property
    def expected_length(self) -> float:
        """Expected number of draws per epoch, over all ranks (``sum_i r_i`` if stochastic)."""
        if self.rounding == "stochastic":
            return float(self.repeat_factors.sum())
        return float(round_factors(self.repeat_factors, self.rounding).sum())

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return repeat_indices(round_factors(self.repeat_factors, self.rounding, rng))
