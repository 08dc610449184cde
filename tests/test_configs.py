"""Every shipped config builds its detector and training data, trains one step and predicts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner

import mmimb  # noqa: F401
from mmimb.hooks import ClassStatsHook
from mmimb.stats import class_stats
from tests.conftest import REPO

CONFIGS = sorted(p for p in (REPO / "configs").glob("*/*.py") if p.parent.name != "_base_")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds(path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(path)
    assert cfg.custom_imports["imports"] == ["mmimb"]
    model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    loader_cfg = cfg.train_dataloader
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    # Two images build, step and predict like eight: the configs' batch of 8 only costs time.
    loader_cfg.batch_size = 2
    dataset_cfg = loader_cfg.dataset
    while "dataset" in dataset_cfg:  # wrappers
        dataset_cfg = dataset_cfg.dataset
    if dataset_cfg.type == "SyntheticLongTailDataset":
        # The default synthetic data, generated once for the session and shared by every config.
        # One folder per generator setting (``lt_synth``, ``lt_synth_masks``).
        name = Path(dataset_cfg.data_root.rstrip("/")).name
        dataset_cfg.data_root = str(tmp_path_factory.getbasetemp() / f"default_{name}")
    elif not Path(dataset_cfg.data_root).is_dir():
        pytest.skip(f"real data not available at {dataset_cfg.data_root}")
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    batch = next(iter(loader))
    assert len(batch["inputs"]) == 2
    classes = loader.dataset.metainfo["classes"]
    assert len(classes) == cfg.model.get("bbox_head", cfg.model.get("roi_head", {}).get(
        "bbox_head", {})).get("num_classes")

    # One training step and one prediction step of the detector on that batch, with the class
    # counts that ClassStatsHook would give to losses configured with class_counts='auto'.
    for loss in ClassStatsHook.targets(model):
        loss.set_class_counts(class_stats(loader.dataset).instance_counts)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    log_vars = model.train_step(batch, optim)  # forward, backward, SGD step
    assert all(math.isfinite(float(v)) for v in log_vars.values()), log_vars
    after = list(model.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in after)  # finite gradients, finite step
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    model.eval()
    with torch.no_grad():
        predictions = model.test_step(batch)
    assert len(predictions) == len(batch["inputs"])
    for sample in predictions:
        labels = sample.pred_instances.labels
        assert labels.numel() == 0 or int(labels.max()) < len(classes)
