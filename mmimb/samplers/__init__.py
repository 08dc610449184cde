"""mmimb.samplers: re-sampling samplers, registered in ``mmdet.registry.DATA_SAMPLERS``.

- :class:`RepeatFactorSampler`: LVIS repeat-factor sampling with exact (stochastic) rounding.
- :class:`UndersampleSampler`: per-epoch under-sampling of majority classes.
- :class:`ClassAwarePowerSampler`: class-aware sampling with a power knob.

All share one determinism contract (:mod:`mmimb.samplers._common`): epoch ``e`` is a function of
``(seed, e)`` only, identical on every rank, and each rank loads a disjoint shard of it.
"""

from mmimb.samplers._common import (
    ROUNDING_MODES,
    ResamplingSampler,
    epoch_rng,
    repeat_indices,
    round_factors,
    shard,
    systematic_counts,
)
from mmimb.samplers.class_aware import ClassAwarePowerSampler
from mmimb.samplers.repeat_factor import (
    RepeatFactorSampler,
    dataset_repeat_factors,
    resolve_oversample_thr,
)
from mmimb.samplers.undersample import UndersampleSampler

__all__ = [
    "ROUNDING_MODES",
    "ClassAwarePowerSampler",
    "RepeatFactorSampler",
    "ResamplingSampler",
    "UndersampleSampler",
    "dataset_repeat_factors",
    "epoch_rng",
    "repeat_indices",
    "resolve_oversample_thr",
    "round_factors",
    "shard",
    "systematic_counts",
]
