"""Every shipped config loads, builds its detector, and builds its training data loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.runner import Runner

import mmimb  # noqa: F401
from tests.conftest import REPO

CONFIGS = sorted(p for p in (REPO / "configs").glob("*/*.py") if p.parent.name != "_base_")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds(path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(path)
    assert cfg.custom_imports["imports"] == ["mmimb"]
    model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    # The default synthetic data, generated once for the session and shared by every config.
    root = tmp_path_factory.getbasetemp() / "default_lt_synth"
    loader_cfg = cfg.train_dataloader
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    dataset_cfg = loader_cfg.dataset
    while "dataset" in dataset_cfg:  # wrappers
        dataset_cfg = dataset_cfg.dataset
    dataset_cfg.data_root = str(root)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    batch = next(iter(loader))
    assert len(batch["inputs"]) == cfg.train_dataloader.batch_size
    classes = loader.dataset.metainfo["classes"]
    assert len(classes) == cfg.model.get("bbox_head", cfg.model.get("roi_head", {}).get(
        "bbox_head", {})).get("num_classes")
