"""Decoupled classifier re-training: freezing by name pattern, and both stages with one command."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from mmdet.registry import HOOKS, MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from torch.nn.modules.batchnorm import _BatchNorm

from mmimb.hooks import FreezeExceptHook
from mmimb.hooks.freeze import freeze_except, matches, split_parameters
from mmimb.strategies import check_stage2_config, run_decoupled
from tests.conftest import REPO, TINY, load_script
from tests.test_train_e2e import write_config

FRCNN = "faster_rcnn/faster-rcnn_r18tiny_fpn_1k_ltsynth.py"
CRT = "faster_rcnn/crt_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"
FC_CLS = ["roi_head.bbox_head.fc_cls.weight", "roi_head.bbox_head.fc_cls.bias"]


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    register_all_modules(init_default_scope=False)
    return MODELS.build(Config.fromfile(REPO / "configs" / FRCNN).model)


def test_patterns_name_parameters_or_the_modules_that_hold_them() -> None:
    name = "roi_head.bbox_head.fc_cls.weight"
    for pattern in ("roi_head.bbox_head.fc_cls", "roi_head.bbox_head", name, "*.fc_cls",
                    "*fc_cls*", "roi_head.*.fc_cls"):
        assert matches(name, [pattern]), pattern
    for pattern in ("roi_head.bbox_head.fc", "fc_cls", "bbox_head", "roi_head.bbox_head.fc_reg"):
        assert not matches(name, [pattern]), pattern


def test_freeze_except_trains_the_classifier_only(detector: torch.nn.Module) -> None:
    trainable, norms = freeze_except(detector, ["roi_head.bbox_head.fc_cls"])
    assert trainable == FC_CLS
    assert [n for n, p in detector.named_parameters() if p.requires_grad] == FC_CLS
    all_bn = [m for m in detector.modules() if isinstance(m, _BatchNorm)]
    assert len(all_bn) > 10 and norms == all_bn and not any(m.training for m in norms)
    # A BN layer inside a trainable module keeps training; the others stay frozen.
    trainable, norms = freeze_except(detector, ["backbone.layer1"])
    layer1_bn = [m for m in detector.backbone.layer1.modules() if isinstance(m, _BatchNorm)]
    assert layer1_bn and not set(map(id, layer1_bn)) & set(map(id, norms))
    assert len(norms) == len(all_bn) - len(layer1_bn)
    assert all(n.startswith("backbone.layer1.") for n in trainable)


def test_a_pattern_that_matches_nothing_or_everything_raises(detector: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"'roi_head.bbox_head.fc_clss' matches no parameter of "
                                         r"FasterRCNN. Closest names: \['roi_head.bbox_head"
                                         r".fc_cls'.*backbone.conv1, backbone.bn1"):
        split_parameters(detector, ["roi_head.bbox_head.fc_cls", "roi_head.bbox_head.fc_clss"])
    with pytest.raises(ValueError, match="match all .* parameters of FasterRCNN: nothing would "
                                         "be frozen"):
        split_parameters(detector, ["*"])
    with pytest.raises(TypeError, match="list of name patterns"):
        FreezeExceptHook("roi_head.bbox_head.fc_cls")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        FreezeExceptHook([])
    with pytest.raises(ValueError, match="non-empty strings"):
        FreezeExceptHook([""])


def fake_runner(model: torch.nn.Module | None = None, **cfg: Any) -> Any:
    return SimpleNamespace(cfg=Config(cfg), model=model,
                           logger=MMLogger.get_instance("test_decoupled"))


def test_hook_refuses_a_run_without_the_stage1_checkpoint(tmp_path: Path) -> None:
    hook = HOOKS.build(dict(type="FreezeExceptHook"))
    assert hook.trainable == ("roi_head.bbox_head.fc_cls",)
    with pytest.raises(ValueError, match="no load_from"):
        hook.before_run(fake_runner(load_from=None))
    with pytest.raises(FileNotFoundError, match="missing.pth.*does not exist"):
        hook.before_run(fake_runner(load_from=str(tmp_path / "missing.pth")))
    hook.before_run(fake_runner(load_from=None, resume=True))  # resumes its own checkpoint
    FreezeExceptHook(require_checkpoint=False).before_run(fake_runner(load_from=None))


def test_hook_keeps_frozen_norm_layers_in_eval_mode(detector: torch.nn.Module) -> None:
    hook = FreezeExceptHook()
    runner = fake_runner(detector)
    hook.before_train(runner)
    detector.train()  # what mmengine's loops do before every iteration
    hook.before_train_iter(runner, 0)
    assert not detector.backbone.bn1.training and detector.roi_head.bbox_head.training
    assert [n for n, p in detector.named_parameters() if p.requires_grad] == FC_CLS
    with pytest.raises(ValueError, match="matches no parameter"):
        FreezeExceptHook(["rpn_head.fc_cls"]).before_train(runner)


def test_decoupled_tool_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FreezeExceptHook"):
        check_stage2_config(Config(dict(custom_hooks=[dict(type="ClassStatsHook")])))
    crt = REPO / "configs" / CRT
    with pytest.raises(FileNotFoundError, match="stage1_checkpoint .* does not exist"):
        run_decoupled(crt, tmp_path, REPO, stage1_checkpoint=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="names no stage1_config"):
        run_decoupled(crt, tmp_path, REPO, cfg_options={"stage1_config": None})
    assert not any(tmp_path.iterdir())  # nothing trained


def tiny_frcnn_config(folder: Path, data_root: Path, base: str, **train_cfg: int) -> Path:
    folder.mkdir()
    path = write_config(folder, data_root, base, **train_cfg)
    text = path.read_text().replace(
        f"model = dict(bbox_head=dict(num_classes={TINY.num_classes}))",
        f"model = dict(roi_head=dict(bbox_head=dict(num_classes={TINY.num_classes})))")
    path.write_text(text)
    return path


def load_tool() -> Any:
    return load_script("tools/train_decoupled.py")


@pytest.mark.slow
def test_stage2_changes_the_classifier_and_nothing_else(tmp_path: Path, tiny_root: Path) -> None:
    """Both stages with one command: after stage 2, every weight and BN statistic but the
    classifier's is bit-identical to stage 1's final checkpoint (loaded with load_from)."""
    stage1 = tiny_frcnn_config(tmp_path / "s1", tiny_root, FRCNN, max_iters=2, val_interval=2)
    stage2 = tiny_frcnn_config(tmp_path / "s2", tiny_root, CRT, max_iters=3, val_interval=3)
    with stage2.open("a") as f:  # the shipped stage 2 (sampler), on the tiny data and model
        f.write(f"stage1_config = '{stage1}'\ncustom_hooks = [dict(type='ClassStatsHook'), "
                "dict(type='FreezeExceptHook', trainable=['roi_head.bbox_head.fc_cls'])]\n")
    work = tmp_path / "work"
    assert load_tool().main([str(stage2), "--work-dir", str(work)]) == 0

    report = json.loads((work / "decoupled.json").read_text())
    first = torch.load(report["stage1"]["checkpoint"], map_location="cpu")
    second = torch.load(report["stage2"]["checkpoint"], map_location="cpu")
    assert first["meta"]["iter"] == 2 and second["meta"]["iter"] == 3
    sampler = Config.fromfile(report["stage2"]["config"]).train_dataloader.sampler
    assert sampler.type == "ClassAwarePowerSampler"
    a, b = first["state_dict"], second["state_dict"]
    assert a.keys() == b.keys()
    changed = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert changed == sorted(FC_CLS)
    assert sum(k.endswith("running_var") for k in a) > 10  # the BN statistics were compared
    assert report["report"]["overall"]["mAP"] >= 0
    assert Path(report["report_path"]).is_relative_to(work / "stage2")
