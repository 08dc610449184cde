"""Class-aware sampling with a power knob ``q``, from plain uniform (``q = 0``) to every class
equally likely (``q = 1``).

Shape shorthand: ``N`` images, ``M`` draws in an epoch.
"""

from __future__ import annotations

from collections.abc import Sized

import numpy as np
from mmdet.registry import DATA_SAMPLERS

from mmimb.samplers._common import (
    INCLUDE_IGNORED_DEFAULT,
    ResamplingSampler,
    check_bool,
    read_image_labels,
    repeat_indices,
    round_factors,
)
from mmimb.stats import class_aware_weights


@DATA_SAMPLERS.register_module()
class ClassAwarePowerSampler(ResamplingSampler):
    """Sampler that draws images with probability ``P(i) ∝ max_{c in i} f_c ** -q``.

    ``f_c`` is the fraction of images containing class ``c`` and ``q`` the ``power``; images
    without boxes count as one more class (see :func:`mmimb.stats.class_aware_weights`).
    ``q = 0`` is plain uniform sampling: every image exactly once per epoch. ``q = 1`` makes
    every class equally likely (exactly so when images hold one class each), the case that
    mmdet's ``ClassAwareSampler`` implements; ``q = 0.5`` is square-root sampling.

    An epoch has ``num_samples`` draws in expectation: image ``i`` is drawn
    ``num_samples * P(i)`` times, rounded stochastically (integer part plus a Bernoulli draw of
    the fraction, redrawn every epoch from ``(seed, epoch)``). Compared with drawing
    ``num_samples`` images independently (with replacement), each image's count has the same
    expectation but far less variance: no image is skipped or drawn many times by chance.

    Config example::

        train_dataloader = dict(sampler=dict(type='ClassAwarePowerSampler', power=0.5))

    Args:
        dataset: the training set.
        power: exponent ``q >= 0``.
        by: class frequency counted over ``'image'`` or ``'instance'``.
        reduce: image weight from its classes' weights, ``'max'`` or ``'mean'``.
        num_samples: expected draws per epoch over all ranks; by default the number of images.
        seed: the shared seed; ``None`` draws one and broadcasts it from rank 0.
        shuffle: shuffle each epoch.
        infinite: go through epochs without end (iteration-based training).
        include_ignored: also count boxes whose ``ignore_flag`` is set (crowd boxes) in the
            class frequencies and image weights; ``False`` (default) counts only the boxes the
            losses train on, ``True`` counts what ``get_cat_ids`` lists, as mmdet's
            ``ClassAwareSampler`` does.

    Attributes:
        weights: ``float64[N]`` sampling weight ``w_i`` of every image, ``P(i) = w_i / sum(w)``.

    Raises:
        TypeError: if ``shuffle``, ``infinite`` or ``include_ignored`` is not a bool.
        ValueError: if ``power < 0``, ``num_samples < 1``, ``by`` or ``reduce`` is unknown, or
            the dataset is empty.
    """

    def __init__(self, dataset: Sized, power: float = 1.0, by: str = "image",
                 reduce: str = "max", num_samples: int | None = None, seed: int | None = None,
                 shuffle: bool = True, infinite: bool = False,
                 include_ignored: bool = INCLUDE_IGNORED_DEFAULT) -> None:
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"num_samples must be an int >= 1 or None, got {num_samples!r}")
        self.include_ignored = check_bool(include_ignored, "include_ignored")
        super().__init__(dataset, seed=seed, shuffle=shuffle, infinite=infinite)
        labels = read_image_labels(dataset, self.include_ignored)
        self.weights = class_aware_weights(labels, power, by, reduce)
        self.num_samples = labels.num_images if num_samples is None else num_samples

    @property
    def expected_counts(self) -> np.ndarray:
        """``float64[N]`` expected draws of each image per epoch, ``num_samples * P(i)``."""
        return self.weights * (self.num_samples / self.weights.sum())

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return repeat_indices(round_factors(self.expected_counts, "stochastic", rng))
