"""Machinery shared by mmimb's transforms: the training set they read, and their random streams.

How a transform gets the training set
-------------------------------------
A transform lives inside its dataset's pipeline and never sees that dataset, so the transforms
take the training set as an argument: a dataset object, or its config dict, usually the same
dict as ``train_dataloader.dataset`` (in a config: ``dataset={{_base_.train_dataloader.
dataset}}``). A config is built once per process, on first use, with every ``pipeline`` inside
it emptied: the annotations are read, no transform is built, and a dataset whose pipeline holds
the transform itself does not recurse. Its class statistics come from :mod:`mmimb.stats`.

Determinism contract
--------------------
Every draw of a transform comes from its own ``numpy`` generator, one per process, seeded with
``SeedSequence([seed, rank, process_seed])``:

- in a data loader worker, ``process_seed`` is the worker's ``torch`` seed
  (``torch.utils.data.get_worker_info().seed``), which torch derives from the run's seed, the
  epoch's new iterator and the worker id: a new one for every epoch unless the workers are
  persistent;
- in the main process (``num_workers=0``, tools, tests) it is ``torch.initial_seed()``, i.e. the
  run's seed once mmengine has called ``set_random_seed``.

So, given mmengine's ``randomness.seed`` (or ``torch.manual_seed`` before the loader is iterated),
the transform's ``seed``, the number of workers and the sampler's order, every image receives
the same augmentation in every run; ``seed`` changes the augmentation and nothing else. The
generator is rebuilt whenever the process or the worker seed changes, so a generator copied into
a forked worker is never reused there. Transforms that a wrapper applies (``mmdet``/``mmcv``
transforms) keep drawing from the global ``numpy``/``random`` state that mmengine's
``worker_init_fn`` seeds.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmdet.registry import DATASETS
from mmengine.dataset import BaseDataset
from mmengine.dist import get_dist_info
from torch.utils.data import get_worker_info

from mmimb.stats import ClassStats, class_stats

_SEED_MASK = (1 << 64) - 1
#: Stream tags, so the bank's draws and the per-image draws of one seed are independent.
BANK_STREAM = 0x62616E6B  # "bank"
CALL_STREAM = 0x63616C6C  # "call"


def check_seed(seed: int) -> int:
    """Return ``seed`` as an ``int``.

    Raises:
        ValueError: if ``seed`` is not an integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return int(seed)


def check_unit_interval(value: float, name: str, what: str = "a probability") -> float:
    """Return ``value`` as a ``float`` if it is a number in ``[0, 1]``.

    Raises:
        ValueError: naming ``name``, otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be {what} in [0, 1], got {value!r}")
    return float(value)


def check_number(value: float, name: str, minimum: float = 0.0, strict: bool = False) -> float:
    """Return ``value`` as a ``float`` if it is a finite number ``>= minimum`` (``>`` if strict).

    Raises:
        ValueError: naming ``name``, otherwise.
    """
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.number) \
        and bool(np.isfinite(value)) and (value > minimum if strict else value >= minimum)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, "
                         f"got {value!r}")
    return float(value)


class ProcessRNG:
    """The per-process generator of a transform (see the module's determinism contract).

    Args:
        seed: the transform's seed.
        stream: a tag that separates the streams of different uses of one seed.
    """

    def __init__(self, seed: int, stream: int = CALL_STREAM) -> None:
        self.seed = check_seed(seed)
        self.stream = stream
        self._rng: np.random.Generator | None = None
        self._key: tuple[int, int | None] | None = None

    def get(self) -> np.random.Generator:
        """This process's generator, created on first use in the process."""
        info = get_worker_info()
        key = (os.getpid(), None if info is None else int(info.seed))
        if self._rng is None or key != self._key:
            process_seed = torch.initial_seed() if info is None else info.seed
            entropy = [self.seed & _SEED_MASK, self.stream, get_dist_info()[0],
                       int(process_seed) & _SEED_MASK]
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._key = key
        return self._rng


def _annotations_only(cfg: Any) -> Any:
    """A copy of a dataset config that reads annotations only.

    Every ``pipeline`` (wrappers' included) is emptied, and mmengine datasets skip serialising
    their data list (whose ``gc.collect()`` costs a second in a large process; the transforms
    read every record once).
    """
    if isinstance(cfg, dict):
        out = {k: _annotations_only(v) for k, v in cfg.items()}
        if "pipeline" in out:
            out["pipeline"] = []
        cls = DATASETS.get(out["type"]) if isinstance(out.get("type"), str) else out.get("type")
        if isinstance(cls, type) and issubclass(cls, BaseDataset):
            out["serialize_data"] = False
        return type(cfg)(out) if type(cfg) is not dict else out
    if isinstance(cfg, list | tuple):
        return type(cfg)(_annotations_only(v) for v in cfg)
    return copy.deepcopy(cfg)


def build_annotation_dataset(dataset: Any) -> Any:
    """The training set as an initialised dataset object.

    Args:
        dataset: a dataset object (returned as it is, after ``full_init()``), or its config
            dict, which is built with every pipeline emptied and ``lazy_init=False`` (and
            ``serialize_data=False``).

    Returns:
        The dataset.

    Raises:
        ValueError: if ``dataset`` is ``None``.
    """
    if dataset is None:
        raise ValueError("dataset is required: pass the training dataset or its config dict, "
                         "e.g. dataset={{_base_.train_dataloader.dataset}}")
    if isinstance(dataset, dict):
        cfg = dict(_annotations_only(dataset))
        cfg["lazy_init"] = False
        dataset = DATASETS.build(cfg)
    if hasattr(dataset, "full_init"):
        dataset.full_init()
    return dataset


def class_stats_of(dataset: Any) -> ClassStats:
    """:func:`mmimb.stats.class_stats` of the training set, which must not be empty.

    Raises:
        ValueError: if the dataset has no images.
    """
    stats = class_stats(dataset)
    if stats.num_images == 0:
        raise ValueError(f"dataset is empty: {type(dataset).__name__} has no images")
    return stats


def class_indices(names: Sequence[str], classes: Sequence[str], arg: str) -> np.ndarray:
    """Indices of the class ``names`` among the dataset's ``classes``.

    Raises:
        ValueError: naming ``arg``, if a name is not a class of the dataset.
    """
    if isinstance(names, str):
        raise ValueError(f"{arg} must be a list of class names, got the string {names!r}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ValueError(f"{arg} names unknown classes {unknown}; the dataset's classes are "
                         f"{list(classes)}")
    return np.asarray([index[n] for n in names], dtype=np.int64)
