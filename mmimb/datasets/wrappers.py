"""Dataset wrappers that re-sample a detection dataset, registered in ``mmdet.registry.DATASETS``.

:class:`RepeatFactorDataset` is LVIS repeat-factor sampling (Gupta et al., CVPR 2019) as a
wrapper, for pipelines that need a dataset rather than a sampler: under mmdet's
``MultiImageMixDataset`` (Mosaic/MixUp then draw their extra images with the same factors), or
inside a ``ConcatDataset``. It is a drop-in for mmengine's ``ClassBalancedDataset``
(``type='RepeatFactorDataset', oversample_thr=...``) whose repeat counts are exact in
expectation and redrawn every epoch instead of rounded up once; ``rounding='ceil',
include_ignored=True`` gives mmengine's table exactly.

How the per-epoch redraw works
------------------------------
A wrapper's length must not change: mmengine's ``DefaultSampler`` and ``InfiniteSampler``,
``ConcatDataset`` and ``MultiImageMixDataset`` all read it once, at construction. So the
wrapper has the fixed length ``L = round(sum_i r_i)`` and redraws *which* images fill the
``L`` slots: epoch ``e``'s index table is a pure function of ``(seed, e)``
(:func:`mmimb.samplers.systematic_counts`), identical on every rank.

The epoch lives in a one-element tensor in shared memory, so ``set_epoch`` called in the main
process reaches the copies of the wrapper in the data loader's worker processes, persistent
ones included; each process redraws its table when it sees a new epoch. mmengine calls
``set_epoch`` on samplers only, so :class:`DatasetEpochHook` (add it to ``custom_hooks``) calls
it on every wrapper of the training set: before each epoch in epoch-based loops (exact), and
every ``len(dataset)`` samples in iteration-based loops, where no hook runs between two passes
of the data loader (batches that the workers had already prefetched then still come from the
previous table). For iteration-based training with exact epoch boundaries, use
:class:`mmimb.samplers.RepeatFactorSampler` with ``infinite=True`` instead. A training without
the hook gets a warning from :class:`mmimb.hooks.SetupCheckHook` when it starts.

Shape shorthand: ``N`` images of the wrapped dataset, ``L`` slots of the wrapper.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from mmdet.registry import DATASETS, HOOKS
from mmengine.dataset import force_full_init
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop

from mmimb.samplers._common import (
    INCLUDE_IGNORED_DEFAULT,
    check_bool,
    check_epoch,
    check_rounding,
    epoch_rng,
    repeat_indices,
    resolve_seed,
    round_factors,
    systematic_counts,
)
from mmimb.samplers.repeat_factor import dataset_repeat_factors
from mmimb.stats import validate_repeat_factor_args


@DATASETS.register_module()
class RepeatFactorDataset:
    """Wrapper that repeats image ``i`` of a dataset ``r_i`` times per epoch (LVIS repeat factors).

    ``r_i = max_{c in i} r_c``, ``r_c = max(1, (t / f_c) ** p)``, ``f_c`` the fraction of images
    containing class ``c`` (:func:`mmimb.stats.class_repeat_factors`); images without boxes get
    1. The labels are read once, through :mod:`mmimb.stats`.

    Rounding to whole draws:

    - ``'stochastic'`` (default): the wrapper has ``L = round(sum_i r_i)`` slots, and every
      epoch fills them by systematic sampling, so that image ``i`` fills
      ``s_i = r_i * L / sum_j r_j`` slots on average (``|L / sum_j r_j - 1| <= 1 / (2N)``), its
      integer part always and its fraction with that probability. The table is redrawn when the
      epoch changes (see the module docstring and :class:`DatasetEpochHook`).
    - ``'ceil'``: ``ceil(r_i)`` slots per image, the same table as mmengine's
      ``ClassBalancedDataset`` when ``include_ignored=True`` (mmengine counts crowd boxes);
      ``'floor'``, ``'round'``: likewise. These never change.

    The table holds the slots image by image (``[0, 0, 1, 2, 2, 2, ...]``); shuffling is the
    sampler's job. ``get_data_info`` and ``get_cat_ids`` answer for the image in a slot, as
    mmengine's wrappers do (mmdet's ``AspectRatioBatchSampler`` needs them), so
    :func:`mmimb.stats.image_labels_from_dataset` reads a wrapper as the images in its current
    slots, repeats included.

    Args:
        dataset: the dataset to wrap, or its config. A ``ConcatDataset`` is fine.
        oversample_thr: frequency threshold ``t`` in ``(0, 1]`` (``1e-3`` for LVIS), or
            ``'auto'``: ``t`` chosen from the data set when it is loaded, by the rule of
            ``mmimb-analyze --resample`` and :class:`~mmimb.samplers.RepeatFactorSampler`
            (:func:`mmimb.samplers.resolve_oversample_thr`; needs ``by='image'`` and
            ``power > 0``). Values above 1 are refused: a fraction cannot exceed 1.
        power: exponent ``p >= 0`` (``0.5`` in the paper).
        by: class frequency counted over ``'image'`` or ``'instance'``.
        reduce: image factor from its classes' factors, ``'max'`` or ``'mean'``.
        rounding: ``'stochastic'``, ``'ceil'``, ``'floor'`` or ``'round'``.
        seed: seed of the stochastic draws; ``None`` draws one and broadcasts it from rank 0.
        include_ignored: also count boxes whose ``ignore_flag`` is set (the crowd boxes that
            mmdet's ``CocoDataset`` keeps with ``ignore_flag=1``) in the class frequencies and
            image factors. ``False`` (default): only the boxes that the losses train on count.
            ``True``: as mmengine's ``ClassBalancedDataset`` (``get_cat_ids`` lists them).
        lazy_init: load nothing until first use. A dataset given as a config is then built
            with ``lazy_init=True`` too, unless its config says otherwise.

    Attributes:
        dataset: the wrapped dataset.
        class_factors: ``float64[C]`` factor ``r_c`` of every class (after :meth:`full_init`).
        repeat_factors: ``float64[N]`` factor ``r_i`` of every image (after :meth:`full_init`).
        threshold: the threshold ``t`` in use, the number that ``'auto'`` chose (after
            :meth:`full_init`).

    Raises:
        TypeError: if ``oversample_thr`` or ``power`` is not a number (``'auto'`` aside), or
            ``include_ignored`` is not a bool, at construction.
        ValueError: if ``oversample_thr`` is outside ``(0, 1]`` or a string other than
            ``'auto'``, ``power < 0``, ``by``, ``reduce`` or ``rounding`` is unknown (at
            construction), or the dataset is empty (when loaded).
    """

    def __init__(self, dataset: Any, oversample_thr: float | str = 1e-3, power: float = 0.5,
                 by: str = "image", reduce: str = "max", rounding: str = "stochastic",
                 seed: int | None = None, include_ignored: bool = INCLUDE_IGNORED_DEFAULT,
                 lazy_init: bool = False) -> None:
        validate_repeat_factor_args(oversample_thr, power, by, reduce)
        self.rounding = check_rounding(rounding)
        self.include_ignored = check_bool(include_ignored, "include_ignored")
        self.oversample_thr, self.power, self.by, self.reduce = oversample_thr, power, by, reduce
        if isinstance(dataset, dict):
            cfg = dict(dataset)
            if lazy_init:
                cfg.setdefault("lazy_init", True)
            dataset = DATASETS.build(cfg)
        self.dataset = dataset
        self._metainfo: dict[str, Any] = self.dataset.metainfo
        self.seed = resolve_seed(seed)
        # Shared memory, so that set_epoch reaches the data loader's (persistent) workers.
        self._shared_epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._table = np.zeros(0, dtype=np.int64)
        self._table_epoch = -1
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict[str, Any]:
        """A copy of the wrapped dataset's meta information."""
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        """Load the wrapped dataset and compute the repeat factors; later calls do nothing.

        Raises:
            ValueError: if the wrapped dataset has no image.
        """
        if self._fully_initialized:
            return
        if hasattr(self.dataset, "full_init"):
            self.dataset.full_init()
        self.class_factors, self.repeat_factors, self.threshold = dataset_repeat_factors(
            self.dataset, self.oversample_thr, self.power, self.by, self.reduce,
            self.include_ignored)
        if self.rounding == "stochastic":
            self._length = int(np.floor(self.repeat_factors.sum() + 0.5))
        else:
            self._table = repeat_indices(round_factors(self.repeat_factors, self.rounding))
            self._length = len(self._table)
        self._fully_initialized = True

    @property
    def epoch(self) -> int:
        """The epoch whose table the wrapper serves."""
        return int(self._shared_epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``'s table from now on, in this process and in its data workers."""
        self._shared_epoch.fill_(check_epoch(epoch))

    @force_full_init
    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The table of ``epoch`` (the current one by default).

        Returns:
            ``int[L]`` indices into the wrapped dataset; slot ``k`` shows image ``table[k]``.
        """
        epoch = self.epoch if epoch is None else check_epoch(epoch)
        if self.rounding != "stochastic":
            return self._table
        if epoch != self._table_epoch:
            counts = systematic_counts(self.repeat_factors, self._length,
                                       epoch_rng(self.seed, epoch))
            return repeat_indices(counts)
        return self._table

    def _source_index(self, idx: int) -> int:
        if self.rounding == "stochastic":
            epoch = self.epoch
            if epoch != self._table_epoch:
                self._table = self.epoch_indices(epoch)
                self._table_epoch = epoch
        return int(self._table[idx])

    @force_full_init
    def get_data_info(self, idx: int) -> dict[str, Any]:
        """The wrapped dataset's annotation of the image in slot ``idx``."""
        return self.dataset.get_data_info(self._source_index(idx))

    @force_full_init
    def get_cat_ids(self, idx: int) -> list[int]:
        """The wrapped dataset's category ids of the image in slot ``idx``."""
        return self.dataset.get_cat_ids(self._source_index(idx))

    @force_full_init
    def __getitem__(self, idx: int) -> Any:
        return self.dataset[self._source_index(idx)]

    @force_full_init
    def __len__(self) -> int:
        return self._length


def walk_datasets(dataset: Any) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every dataset in a tree of wrappers (``.dataset``, ``.datasets``), each once.

    Yields:
        ``(node, wrappers)``: a dataset and the wrappers above it, outermost first; ``dataset``
        itself comes first, with ``()``.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(dataset, ())]
    seen: set[int] = set()
    while stack:
        node, above = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node, above
        children = [getattr(node, "dataset", None), *(getattr(node, "datasets", None) or ())]
        stack.extend((child, (*above, node)) for child in reversed(children)
                     if child is not None)


def datasets_with_epoch(dataset: Any) -> list[Any]:
    """Every dataset in a tree of wrappers (``.dataset``, ``.datasets``) that has ``set_epoch``."""
    return [node for node, _ in walk_datasets(dataset)
            if callable(getattr(node, "set_epoch", None))]


@HOOKS.register_module()
class DatasetEpochHook(Hook):
    """Hands the epoch to dataset wrappers, as mmengine's ``DistSamplerSeedHook`` does to samplers.

    Calls ``set_epoch`` on every dataset of the training data loader that has one (walking
    ``.dataset`` and ``.datasets``, so through ``MultiImageMixDataset`` and ``ConcatDataset``),
    which makes :class:`RepeatFactorDataset` redraw its table:

    - epoch-based loops: before every epoch, with the runner's epoch (exact);
    - iteration-based loops: before every iteration, with the number of complete passes over
      the dataset so far, ``iter * batch_size * world_size // len(dataset)``.

    Config example::

        custom_hooks = [dict(type='DatasetEpochHook')]
    """

    priority = "NORMAL"

    def before_train_epoch(self, runner: Any) -> None:
        if not isinstance(runner.train_loop, IterBasedTrainLoop):
            self._set_epoch(runner.train_loop.dataloader, runner.epoch)

    def before_train_iter(self, runner: Any, batch_idx: int,
                          data_batch: dict | tuple | list | None = None) -> None:
        if isinstance(runner.train_loop, IterBasedTrainLoop):
            loader = runner.train_loop.dataloader
            batch_size = loader.batch_size or loader.batch_sampler.batch_size
            samples = runner.iter * batch_size * get_dist_info()[1]
            self._set_epoch(loader, samples // max(len(loader.dataset), 1))

    @staticmethod
    def _set_epoch(loader: Any, epoch: int) -> None:
        for dataset in datasets_with_epoch(loader.dataset):
            if getattr(dataset, "epoch", None) != epoch:
                dataset.set_epoch(epoch)
