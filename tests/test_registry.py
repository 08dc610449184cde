"""mmimb registers its components into mmdet's registries without shadowing anything."""

from __future__ import annotations

import pytest
from mmdet.registry import (
    DATA_SAMPLERS,
    DATASETS,
    HOOKS,
    METRICS,
    MODELS,
    TASK_UTILS,
    TRANSFORMS,
)
from mmdet.utils import register_all_modules
from mmengine.registry import Registry

import mmimb

REGISTRIES = {"MODELS": MODELS, "DATASETS": DATASETS, "DATA_SAMPLERS": DATA_SAMPLERS,
              "TRANSFORMS": TRANSFORMS, "METRICS": METRICS, "HOOKS": HOOKS,
              "TASK_UTILS": TASK_UTILS}


def mmimb_names(registry: Registry) -> set[str]:
    return {name for name, cls in registry.module_dict.items()
            if cls.__module__.startswith("mmimb.")}


def foreign_names(registry: Registry) -> set[str]:
    """Names registered by anybody but mmimb, in this registry and its ancestors."""
    names: set[str] = set()
    reg: Registry | None = registry
    while reg is not None:
        names |= {n for n, c in reg.module_dict.items() if not c.__module__.startswith("mmimb.")}
        reg = reg.parent
    return names


def test_every_component_is_registered_under_a_fresh_name() -> None:
    register_all_modules(init_default_scope=False)
    registered = {key: mmimb_names(reg) for key, reg in REGISTRIES.items()}
    assert "LongTailMetric" in registered["METRICS"]
    assert "SyntheticLongTailDataset" in registered["DATASETS"]
    assert {"BoxFusion"} <= registered["TASK_UTILS"]
    assert {"BoxFusionEnsemble"} <= registered["MODELS"]
    assert {"FreezeExceptHook"} <= registered["HOOKS"]
    for key, reg in REGISTRIES.items():
        clash = registered[key] & foreign_names(reg)
        assert not clash, f"{key}: mmimb shadows {sorted(clash)}"
    # Every public mmimb class that subclasses a registrable base lives in some registry.
    assert sum(map(len, registered.values())) >= 2


def test_unknown_component_fails_with_the_registry_error() -> None:
    assert mmimb.__version__
    with pytest.raises(KeyError, match="LongTailMetrik is not in the mmdet::metric registry"):
        METRICS.build(dict(type="LongTailMetrik"))
