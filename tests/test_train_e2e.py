"""End to end: tools/train.py and tools/test.py through the real MMEngine runner.

The tiny RetinaNet of the demo trains for a few iterations on the tiny synthetic dataset with
``custom_imports=['mmimb']`` and is evaluated with ``LongTailMetric``; checkpoints written by
``tools/train.py`` are read back by ``--resume`` and by ``tools/test.py`` under torch 2.14.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from mmimb.stats import class_stats_from_coco
from tests.conftest import REPO, TINY

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, data_root: Path, base: str, **train_cfg: int) -> Path:
    """A config that inherits a demo config and points it at the tiny dataset."""
    synthetic = asdict(TINY)
    text = f"""
_base_ = '{REPO / 'configs' / base}'
data_root = '{data_root}/'
synthetic = {synthetic!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs'),
]
model = dict(bbox_head=dict(num_classes={TINY.num_classes}))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, synthetic=synthetic, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, synthetic=synthetic))
test_dataloader = val_dataloader
# Training counts for the groups come from the runner's training set through the hook.
val_evaluator = dict(ann_file=data_root + 'annotations/val.json',
                     train_ann_file=None, class_counts='auto',
                     rare_max=5, common_max=20)
test_evaluator = val_evaluator
custom_hooks = [dict(type='ClassStatsHook')]
train_cfg = dict(max_iters={train_cfg.get('max_iters', 4)},
                 val_interval={train_cfg.get('val_interval', 4)})
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=6)]
default_hooks = dict(checkpoint=dict(interval={train_cfg.get('ckpt_interval', 2)},
                                     max_keep_ckpts=5),
                     logger=dict(interval=1))
"""
    path = tmp_path / "tiny_cfg.py"
    path.write_text(text)
    return path


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def latest_report(work_dir: Path) -> dict:
    reports = sorted(work_dir.glob("*/long_tail.json"))
    assert reports, f"no long_tail.json under {work_dir}"
    return json.loads(reports[-1].read_text())


def test_train_evaluates_with_long_tail_metric(tmp_path: Path, tiny_root: Path) -> None:
    cfg = write_config(tmp_path, tiny_root, "retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py")
    work = tmp_path / "work"
    proc = run_tool("tools/train.py", cfg, "--work-dir", work)
    log = proc.stdout + proc.stderr
    assert "lt/AP_rare" in log and "| group | classes | AP | AP50 |" in log
    report = latest_report(work)
    assert [r["name"] for r in report["classes"]] == list(
        json.loads((tiny_root / "annotations/val.json").read_text())["categories"][i]["name"]
        for i in range(TINY.num_classes))
    assert set(report["groups"]) == {"rare", "common", "frequent"}
    train = class_stats_from_coco(tiny_root / "annotations/train.json")
    assert [r["train_count"] for r in report["classes"]] == train.image_counts.tolist()
    assert sum(g["num_classes"] for g in report["groups"].values()) == TINY.num_classes
    assert (work / "iter_4.pth").exists()
    assert next(work.glob("*/long_tail.md")).read_text().startswith("| class |")


def final_state(work: Path) -> dict:
    ckpt = torch.load(work / "iter_4.pth", map_location="cpu")  # safe loading (weights_only)
    return ckpt


def test_resume_matches_uninterrupted_run_and_test_tool_loads(tmp_path: Path,
                                                             tiny_root: Path) -> None:
    cfg = write_config(tmp_path, tiny_root, "retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py",
                       val_interval=100)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_tool("tools/train.py", cfg, "--work-dir", straight)
    # Interrupted run: stop at iteration 2, then resume from its checkpoint to iteration 4.
    run_tool("tools/train.py", cfg, "--work-dir", split, "--cfg-options", "train_cfg.max_iters=2")
    run_tool("tools/train.py", cfg, "--work-dir", split, "--resume", split / "iter_2.pth")

    a, b = final_state(straight), final_state(split)
    assert a["meta"]["iter"] == b["meta"]["iter"] == 4
    assert a["param_schedulers"] == b["param_schedulers"]
    lr_a = [g["lr"] for g in a["optimizer"]["param_groups"]]
    assert lr_a == [g["lr"] for g in b["optimizer"]["param_groups"]]
    for key, value in a["optimizer"]["state"].items():
        other = b["optimizer"]["state"][key]
        assert float(value["step"]) == float(other["step"]) == 4
        torch.testing.assert_close(value["exp_avg"], other["exp_avg"])
    for name, weight in a["state_dict"].items():
        torch.testing.assert_close(weight, b["state_dict"][name], msg=name)

    proc = run_tool("tools/test.py", cfg, split / "iter_4.pth", "--work-dir", tmp_path / "test")
    assert "lt/mAP" in proc.stdout + proc.stderr
    assert latest_report(tmp_path / "test")["overall"]["mAP"] >= 0
