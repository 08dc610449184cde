"""Machinery shared by every mmimb sampler and dataset wrapper: seeded draws, rounding, sharding.

Determinism contract (the same for all of them): the images of epoch ``e`` are a pure function
of ``(seed, e)``, drawn with ``numpy.random.default_rng(SeedSequence([seed, e]))``. Every rank
builds the same generator (the seed is shared with :func:`mmengine.dist.sync_random_seed` when
not given), so every rank computes the same epoch and keeps its own shard of it; nothing but the
seed is communicated.

Shape shorthand used below:
    N: number of images of the wrapped dataset
    M: number of draws in an epoch (images, with repeats)
    W: world size (number of ranks)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import Sampler

from mmimb.stats import ImageLabels, image_labels_from_dataset

#: Rounding modes of a repeat factor ``r`` to a number of draws.
ROUNDING_MODES: tuple[str, ...] = ("stochastic", "ceil", "floor", "round")

_SEED_MASK = (1 << 64) - 1


def check_rounding(rounding: str) -> str:
    """Return ``rounding`` if it is one of :data:`ROUNDING_MODES`.

    Raises:
        ValueError: otherwise, listing the valid modes.
    """
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    return rounding


def check_epoch(epoch: int) -> int:
    """Return ``epoch`` as an ``int`` if it is a non-negative integer.

    Raises:
        ValueError: otherwise.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    return int(epoch)


def resolve_seed(seed: int | None) -> int:
    """``seed``, or a random seed shared by all ranks (:func:`mmengine.dist.sync_random_seed`)."""
    if seed is None:
        return int(sync_random_seed())
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    return int(seed)


def check_bool(value: bool, name: str) -> bool:
    """Return ``value`` if it is a ``bool``.

    Raises:
        TypeError: otherwise, naming the argument.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def calling_epoch_loop() -> EpochBasedTrainLoop | None:
    """The mmengine ``EpochBasedTrainLoop`` (or subclass) on the call stack, if any.

    A sampler is built inside its loop's ``__init__`` (``BaseLoop`` builds the data loader from
    its config) and iterated inside the loop's ``run_epoch``; the loop is never handed to the
    sampler, so the stack is the one place where the sampler can see it.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if "self" in frame.f_code.co_varnames[:1]:
                owner = frame.f_locals.get("self")
                if isinstance(owner, EpochBasedTrainLoop):
                    return owner
            frame = frame.f_back
        return None
    finally:
        del frame  # no reference cycle through the frames


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch``: a pure function of ``(seed, epoch)``.

    ``SeedSequence([seed, epoch])`` keeps ``(seed, epoch)`` pairs apart that ``seed + epoch``
    would confuse (``(1, 0)`` and ``(0, 1)``).
    """
    return np.random.default_rng(np.random.SeedSequence([seed & _SEED_MASK, check_epoch(epoch)]))


#: Whether samplers and wrappers count boxes with ``ignore_flag`` set (COCO crowd boxes) by
#: default: no, as mmdet's losses never see them. ``include_ignored=True`` counts them, as
#: mmengine's ``ClassBalancedDataset`` and mmdet's ``ClassAwareSampler`` do (``get_cat_ids``).
INCLUDE_IGNORED_DEFAULT = False


def read_image_labels(dataset: Any, include_ignored: bool = INCLUDE_IGNORED_DEFAULT
                      ) -> ImageLabels:
    """Labels of every image of ``dataset``, read once through :mod:`mmimb.stats`.

    Args:
        dataset: the dataset.
        include_ignored: also count boxes whose ``ignore_flag`` is set (mmdet's crowd boxes),
            see :data:`INCLUDE_IGNORED_DEFAULT`.

    Raises:
        ValueError: if the dataset has no image.
    """
    labels = image_labels_from_dataset(dataset, include_ignored=include_ignored)
    if labels.num_images == 0:
        raise ValueError(f"dataset is empty: {type(dataset).__name__} has no images to sample")
    return labels


def index_dtype(num_images: int) -> type[np.signedinteger[Any]]:
    """``int32`` when it can hold every index (half the memory of ``int64``), else ``int64``."""
    return np.int32 if num_images <= np.iinfo(np.int32).max else np.int64


def round_factors(factors: np.ndarray, rounding: str,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Number of draws of each image in one epoch, from its (fractional) factor.

    ``stochastic``: ``floor(r) + Bernoulli(r - floor(r))``, independently per image, so
    ``E[draws] = r`` exactly and the epoch length has expectation ``sum(r)`` (the rounding of
    detectron2's ``RepeatFactorTrainingSampler``). ``ceil``, ``floor``: as named (``ceil`` is
    mmengine's ``ClassBalancedDataset``). ``round``: to the nearest integer, halves up.

    Args:
        factors: ``float[N]`` non-negative factors.
        rounding: one of :data:`ROUNDING_MODES`.
        rng: the epoch's generator; required by ``stochastic``.

    Returns:
        ``int64[N]``.

    Raises:
        ValueError: on an unknown ``rounding``, or ``stochastic`` without ``rng``.
    """
    check_rounding(rounding)
    if rounding == "ceil":
        return np.ceil(factors).astype(np.int64)
    if rounding == "floor":
        return np.floor(factors).astype(np.int64)
    if rounding == "round":
        return np.floor(factors + 0.5).astype(np.int64)
    if rng is None:
        raise ValueError("rng is required by rounding='stochastic'")
    counts = factors.astype(np.int64)  # floor: the factors are >= 0
    counts += rng.random(len(factors)) < factors - counts
    return counts


def systematic_counts(factors: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Draws per image for an epoch of exactly ``total`` draws, proportional to ``factors``.

    The factors are scaled to ``s_i = r_i * total / sum(r)`` (so ``sum(s) = total``); image
    ``i`` is drawn ``floor(s_i)`` times plus once more with probability ``s_i - floor(s_i)``,
    by systematic sampling (Madow, 1949) over the images in a random order: one uniform offset
    ``u``, and the images whose cumulated fractions cross ``u, u + 1, u + 2, ...``. Each image's
    inclusion probability is exactly its fraction, and the number of extra draws is exactly
    ``total - sum(floor(s))``, which a fixed-length dataset wrapper needs.

    Args:
        factors: ``float[N]`` non-negative factors with a positive sum.
        total: the epoch length ``>= 0``.
        rng: the epoch's generator.

    Returns:
        ``int64[N]`` draws, summing to ``total``, with ``E[draws_i] = s_i``.
    """
    scaled = factors * (total / factors.sum())
    counts = scaled.astype(np.int64)  # floor: the factors are >= 0
    extra = total - int(counts.sum())
    if extra > 0:
        # In place where possible: at Objects365 scale every [N] temporary is 14 MB.
        scaled -= counts
        order = rng.permutation(len(factors))
        cumulative = scaled[order]
        del scaled
        np.cumsum(cumulative, out=cumulative)
        points = np.arange(extra, dtype=np.float64)
        points += rng.random()
        hits = np.searchsorted(cumulative, points, side="right")
        del cumulative, points
        np.minimum(hits, len(order) - 1, out=hits)
        counts += np.bincount(order[hits], minlength=len(factors))
    return counts


def repeat_indices(counts: np.ndarray) -> np.ndarray:
    """``[0]*counts[0] + [1]*counts[1] + ...`` as a compact integer array (``int[M]``)."""
    return np.repeat(np.arange(len(counts), dtype=index_dtype(len(counts))), counts)


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The part of an epoch that ``rank`` loads: every ``world_size``-th draw from ``rank``.

    As mmengine's ``DefaultSampler`` with ``round_up=True``: the epoch is first padded with its
    own beginning to a multiple of ``world_size``, so every rank loads the same number of
    images (``ceil(M / W)``) and distributed training never waits on a rank that ran out.
    """
    total = math.ceil(len(indices) / world_size) * world_size
    if total > len(indices) and len(indices):
        indices = np.resize(indices, total)  # repeats the array cyclically
    return indices[rank:total:world_size]


class ResamplingSampler(Sampler[int]):
    """Base of mmimb's samplers: a fresh random multiset of images every epoch.

    A subclass implements :meth:`_draw`, the epoch's images as an unordered multiset. This class
    shuffles them with the same generator, pads them to a multiple of the world size and hands
    each rank its shard (:func:`shard`). Epoch ``e`` depends on ``(seed, e)`` only: the same on
    every rank, in every run, whatever happened before; :meth:`set_epoch` (called by mmengine's
    ``DistSamplerSeedHook`` in epoch-based loops and by its iteration-based loop each time the
    data loader restarts) moves to another epoch and so redraws.

    With ``infinite=True`` the sampler never ends and goes through epochs ``e, e + 1, ...`` by
    itself, like mmengine's ``InfiniteSampler``, for iteration-based training
    (``IterBasedTrainLoop``). Either way the number of draws may change from epoch to epoch
    (stochastic rounding, under-sampling); ``len()`` is that of the current epoch on this rank.

    ``infinite=True`` under mmengine's ``EpochBasedTrainLoop`` would make the first epoch last
    for ever (no validation, no checkpoint; the log shows ``Iter(train) [50/4]``), so it is
    refused with a ``ValueError``: when the loop builds the sampler (the usual case, a config),
    and otherwise when the loop first iterates it, before any training step. The loop is found
    on the call stack (:func:`calling_epoch_loop`), as nothing hands it to the sampler.

    Args:
        dataset: the dataset to sample from.
        seed: the shared seed; ``None`` draws one and broadcasts it from rank 0.
        shuffle: shuffle each epoch; ``False`` yields the images in index order (for debugging).
        infinite: iterate over consecutive epochs without end (``IterBasedTrainLoop`` only).

    Raises:
        TypeError: if ``shuffle`` or ``infinite`` is not a bool.
        ValueError: if ``infinite=True`` and an ``EpochBasedTrainLoop`` builds the sampler
            (or, from :meth:`__iter__`, iterates it). Subclasses call this ``__init__`` before
            they read any label, so that the refusal comes first.
    """

    def __init__(self, dataset: Sized, seed: int | None = None, shuffle: bool = True,
                 infinite: bool = False) -> None:
        self.rank, self.world_size = get_dist_info()
        self.dataset = dataset
        self.seed = resolve_seed(seed)
        self.shuffle = check_bool(shuffle, "shuffle")
        self.infinite = check_bool(infinite, "infinite")
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None
        self._refuse_epoch_loop()

    def _refuse_epoch_loop(self) -> None:
        """Raise if this infinite sampler is built or iterated by an ``EpochBasedTrainLoop``."""
        if not self.infinite:
            return
        loop = calling_epoch_loop()
        if loop is not None:
            name = type(self).__name__
            raise ValueError(
                f"{name}(infinite=True) never ends an epoch, but it is driven by "
                f"{type(loop).__name__}, whose first epoch would then never end (no validation, "
                f"no checkpoint, an ETA of -1 day). infinite=True belongs with "
                f"train_cfg=dict(type='IterBasedTrainLoop', ...); with "
                f"{type(loop).__name__} use {name}(infinite=False), the default")

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch's multiset of dataset indices (``int[M]``, any order)."""
        raise NotImplementedError

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """Every draw of an epoch (all ranks, before padding), in the order they are loaded.

        Args:
            epoch: the epoch; the current one by default.

        Returns:
            ``int[M]`` dataset indices.
        """
        epoch = self.epoch if epoch is None else check_epoch(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = epoch_rng(self.seed, epoch)
        indices = self._draw(rng)
        if self.shuffle:
            indices = rng.permutation(indices)
        self._cache = (epoch, indices)
        return indices

    def rank_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's shard of :meth:`epoch_indices` (``int[ceil(M / W)]``)."""
        return shard(self.epoch_indices(epoch), self.rank, self.world_size)

    def __iter__(self) -> Iterator[int]:
        self._refuse_epoch_loop()  # a data loader built outside the loop: its first batch
        epoch = self.epoch
        while True:
            yield from self.rank_indices(epoch).tolist()
            if not self.infinite:
                return
            epoch += 1

    def __len__(self) -> int:
        return len(self.rank_indices())

    def set_epoch(self, epoch: int) -> None:
        """Move to epoch ``epoch``: the next iteration yields that epoch's draw."""
        self.epoch = check_epoch(epoch)
