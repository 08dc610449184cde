"""Balanced ensembles: box fusion by hand, member subsets and seeds, a resumable 2-member run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS, TASK_UTILS
from mmengine.config import Config
from mmengine.structures import InstanceData

from mmimb.samplers import UndersampleSampler
from mmimb.strategies import (
    FINISHED,
    BoxFusionEnsemble,
    check_same_classes,
    ensemble_settings,
    evaluate_ensemble,
    fuse_detections,
    member_config,
    run_ensemble,
)
from tests.conftest import REPO, TINY, load_script
from tests.test_samplers import MULTI_LABELS, fake_dataset
from tests.test_train_e2e import write_config

# Two members on an image of height 100 and width 200. A and B overlap (IoU 1444 / 1756), C is
# alone; all of class 1.
A, B, C = [10.0, 10.0, 50.0, 50.0], [12.0, 12.0, 52.0, 52.0], [70.0, 70.0, 90.0, 90.0]
IOU_AB = 38 * 38 / (1600 + 1600 - 38 * 38)
SIZE = (100, 200)


def dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> tuple:
    return (np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(scores, dtype=np.float64),
            np.array(labels, dtype=np.int64))


MEMBER_0 = dets([A, C], [0.9, 0.3], [1, 1])
MEMBER_1 = dets([B], [0.6], [1])


def check(result: tuple, boxes: list[list[float]], scores: list[float], labels: list[int]) -> None:
    got_boxes, got_scores, got_labels = result
    assert got_boxes.dtype == np.float32 and got_scores.dtype == np.float32
    assert got_labels.dtype == np.int64
    np.testing.assert_allclose(got_boxes, np.array(boxes).reshape(-1, 4), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)


# ---------------------------------------------------------------------------------------------
# Fusion.


def test_wbf_matches_the_hand_computed_fusion() -> None:
    # A and B fuse into their score-weighted mean; the score is sum(w s) / sum(w) = 1.5 / 2.
    # C was found by one member of two: half its score.
    ab = [(0.9 * a + 0.6 * b) / 1.5 for a, b in zip(A, B, strict=True)]
    check(fuse_detections([MEMBER_0, MEMBER_1], SIZE), [ab, C], [0.75, 0.15], [1, 1])
    # Weights 2 and 1: box weights 1.8 and 0.6, score (1.8 + 0.6) / 3, C keeps 2 * 0.3 / 3.
    ab = [(1.8 * a + 0.6 * b) / 2.4 for a, b in zip(A, B, strict=True)]
    check(fuse_detections([MEMBER_0, MEMBER_1], SIZE, weights=[2, 1]), [ab, C], [0.8, 0.2],
          [1, 1])


def test_nms_and_soft_nms_match_hand_computed_results() -> None:
    check(fuse_detections([MEMBER_0, MEMBER_1], SIZE, method="nms"), [A, C], [0.9, 0.3], [1, 1])
    # Weights scale each member's scores by w / max(w).
    check(fuse_detections([MEMBER_0, MEMBER_1], SIZE, method="nms", iou_thr=0.9,
                          weights=[1, 2]), [B, A, C], [0.6, 0.45, 0.15], [1, 1, 1])
    # Gaussian soft-NMS keeps B with its score decayed by exp(-IoU^2 / sigma).
    decayed = 0.6 * math.exp(-IOU_AB ** 2 / 0.5)
    check(fuse_detections([MEMBER_0, MEMBER_1], SIZE, method="soft_nms", sigma=0.5),
          [A, C, B], [0.9, 0.3, decayed], [1, 1, 1])
    linear = 0.6 * (1 - IOU_AB)
    check(fuse_detections([MEMBER_0, MEMBER_1], SIZE, method="soft_nms", iou_thr=0.5,
                          soft_nms_type="linear", score_thr=0.05), [A, C, B], [0.9, 0.3, linear],
          [1, 1, 1])


@pytest.mark.parametrize("method", ["wbf", "nms", "soft_nms"])
def test_boxes_of_different_classes_are_never_merged(method: str) -> None:
    same_box = [dets([A], [0.9], [0]), dets([A], [0.6], [3])]
    boxes, scores, labels = fuse_detections(same_box, SIZE, method=method, iou_thr=0.1)
    assert sorted(labels.tolist()) == [0, 3]
    np.testing.assert_allclose(boxes, [A, A], rtol=1e-5)
    weight = 0.5 if method == "wbf" else 1.0  # WBF: one member of two found each box
    np.testing.assert_allclose(scores, [0.9 * weight, 0.6 * weight], rtol=1e-6)


@pytest.mark.parametrize("method", ["wbf", "nms", "soft_nms"])
@pytest.mark.parametrize("size", [(64, 64), (480, 640), (1000, 300), (7, 5000)])
def test_images_of_any_size_round_trip(method: str, size: tuple[int, int]) -> None:
    """One member, one class per box (nothing to merge): the boxes come back in pixels."""
    rng = np.random.default_rng(size[0] * size[1])
    h, w = size
    xy = rng.uniform(0, 1, (20, 2, 2)) * np.array([w, h])
    boxes = np.concatenate([xy.min(1), xy.max(1) + 1e-3 * np.array([w, h])], axis=1)
    boxes = np.minimum(boxes, [w, h, w, h])
    scores = rng.uniform(0.05, 1, 20)
    out_boxes, out_scores, out_labels = fuse_detections(
        [(boxes, scores, np.arange(20))], size, method=method)
    np.testing.assert_array_equal(out_labels, np.argsort(-scores))
    np.testing.assert_allclose(out_boxes, boxes[out_labels], rtol=1e-5, atol=1e-6 * max(size))
    np.testing.assert_allclose(out_scores, scores[out_labels], rtol=1e-6)


@pytest.mark.parametrize("method", ["wbf", "nms", "soft_nms"])
def test_boxes_outside_the_image_are_clipped_and_empty_ones_dropped(method: str) -> None:
    boxes = [[-20, 10, 50, 120], [250, 20, 300, 40], [30, 30, 30, 60]]  # image is 200 x 100
    out = fuse_detections([dets(boxes, [0.9, 0.8, 0.7], [0, 1, 2])], SIZE, method=method)
    check(out, [[0, 10, 50, 100]], [0.9], [0])  # the second is outside, the third has no width
    with pytest.raises(ValueError, match="x2 < x1"):
        fuse_detections([dets([[50, 10, 20, 40]], [0.5], [0])], SIZE, method=method)
    with pytest.raises(ValueError, match="finite"):
        fuse_detections([dets([[0, 0, np.nan, 4]], [0.5], [0])], SIZE, method=method)


@pytest.mark.parametrize("method", ["wbf", "nms", "soft_nms"])
def test_a_member_without_predictions(method: str) -> None:
    empty = dets([], [], [])
    # WBF divides by both members' weights; NMS keeps the scores.
    scale = 0.5 if method == "wbf" else 1.0
    check(fuse_detections([MEMBER_0, empty], SIZE, method=method), [A, C],
          [0.9 * scale, 0.3 * scale], [1, 1])
    boxes, scores, labels = fuse_detections([empty, empty], SIZE, method=method)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64


def test_max_per_img_keeps_the_best_boxes() -> None:
    boxes = [[10 * i, 0, 10 * i + 5, 5] for i in range(5)]
    out = fuse_detections([dets(boxes, [0.1, 0.5, 0.3, 0.9, 0.2], [0] * 5)], SIZE,
                          max_per_img=2, method="nms")
    check(out, [boxes[3], boxes[1]], [0.9, 0.5], [0, 0])


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(weights=[1.0, 1.0, 1.0]), "weights"),
    (dict(weights=[1.0, -1.0]), "weights"),
    (dict(iou_thr=1.5), "iou_thr"),
    (dict(iou_thr=-0.1), "iou_thr"),
    (dict(method="wbf2"), "method"),
    (dict(conf_type="mean"), "conf_type"),
    (dict(score_thr=2.0), "score_thr"),
    (dict(sigma=0.0), "sigma"),
    (dict(soft_nms_type="hard"), "soft_nms_type"),
    (dict(max_per_img=0), "max_per_img"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must"):
        fuse_detections([MEMBER_0, MEMBER_1], SIZE, **kwargs)
    if kwargs.get("weights") != [1.0, 1.0, 1.0]:  # a length is only known at the call
        with pytest.raises(ValueError, match=f"^{name} must"):
            TASK_UTILS.build(dict(type="BoxFusion", **kwargs))
    with pytest.raises(ValueError, match="image_size"):
        fuse_detections([MEMBER_0], (0, 100))


def test_box_fusion_from_config_fuses_pred_instances() -> None:
    fusion = TASK_UTILS.build(dict(type="BoxFusion", method="wbf", weights=[2, 1]))
    preds = []
    for boxes, scores, labels in (MEMBER_0, MEMBER_1):
        pred = InstanceData()
        pred.bboxes, pred.scores = torch.tensor(boxes).float(), torch.tensor(scores).float()
        pred.labels = torch.tensor(labels)
        preds.append(pred)
    fused = fusion(preds, SIZE)
    expected = fuse_detections([MEMBER_0, MEMBER_1], SIZE, weights=[2, 1])
    assert fused.bboxes.dtype == torch.float32 and fused.labels.dtype == torch.int64
    for got, want in zip((fused.bboxes, fused.scores, fused.labels), expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Members: subsets, seeds, class lists.


def test_each_member_keeps_one_subset_with_every_minority_image() -> None:
    dataset = fake_dataset(MULTI_LABELS, 8)
    subsets = []
    for seed in (0, 1):
        sampler = UndersampleSampler(dataset, sampling_strategy={"class0": 60, "class1": 40},
                                     seed=seed, redraw=False)
        first = np.sort(sampler.epoch_indices(0))
        for epoch in (1, 5):  # the same images every epoch, in another order
            later = sampler.epoch_indices(epoch)
            np.testing.assert_array_equal(np.sort(later), first)
            assert not np.array_equal(later, sampler.epoch_indices(0))
        reduced = sampler.targets < sampler.stats.image_counts
        minority = [i for i, x in enumerate(MULTI_LABELS) if any(not reduced[c] for c in x)]
        assert set(minority) <= set(first.tolist())
        subsets.append(set(first.tolist()))
    assert subsets[0] != subsets[1]  # the members differ in their majority images
    with pytest.raises(TypeError, match="redraw"):
        UndersampleSampler(dataset, redraw=0)  # type: ignore[arg-type]


def base_config(**sampler: Any) -> Config:
    return Config(dict(randomness=dict(seed=2), train_dataloader=dict(
        sampler=dict(type="UndersampleSampler", sampling_strategy=0.5, **sampler))))


def test_member_configs_differ_in_seeds_only() -> None:
    cfg = base_config()
    members = [member_config(cfg, k) for k in range(3)]
    assert [m.randomness.seed for m in members] == [2000, 2001, 2002]
    assert [m.train_dataloader.sampler.seed for m in members] == [2000, 2001, 2002]
    assert all(m.train_dataloader.sampler.redraw is False for m in members)
    assert "seed" not in cfg.train_dataloader.sampler  # the config itself is unchanged
    assert member_config(base_config(redraw=True), 0).train_dataloader.sampler.redraw is True


def test_ensemble_settings_refuse_bad_input() -> None:
    cfg = base_config()
    assert ensemble_settings(cfg, 2) == (2, {"type": "BoxFusion"})
    for k in (None, 1, 0, True):
        with pytest.raises(ValueError, match="members >= 2"):
            ensemble_settings(cfg, k)
    cfg.ensemble = dict(members=3, fusion=dict(type="BoxFusion", weights=[1, 2]))
    with pytest.raises(ValueError, match="one entry per member"):
        ensemble_settings(cfg)
    cfg.ensemble.fusion.method = "vote"
    with pytest.raises(ValueError, match="method must be"):
        ensemble_settings(cfg)
    default = Config(dict(train_dataloader=dict(sampler=dict(type="DefaultSampler"))))
    with pytest.raises(ValueError, match="UndersampleSampler"):
        ensemble_settings(default, 2)


def test_class_lists_must_agree() -> None:
    assert check_same_classes([("a", ["x", "y"]), ("b", None), ("c", ("x", "y"))]) == ("x", "y")
    with pytest.raises(ValueError, match=r"lists: a on 2 classes \['x', 'y'\], c on 2 classes "
                                         r"\['y', 'x'\]"):
        check_same_classes([("a", ["x", "y"]), ("c", ["y", "x"])])


# ---------------------------------------------------------------------------------------------
# End to end: the tool, on the tiny synthetic set.


def ensemble_config(tmp_path: Path, tiny_root: Path) -> Path:
    write_config(tmp_path, tiny_root, "retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py",
                 max_iters=4, val_interval=4, ckpt_interval=2)  # tiny_cfg.py
    path = tmp_path / "tiny_ensemble.py"
    path.write_text("_base_ = './tiny_cfg.py'\ntrain_dataloader = dict(sampler=dict(_delete_=True, "
                    "type='UndersampleSampler', sampling_strategy=0.5))\nensemble = dict("
                    "members=2, fusion=dict(type='BoxFusion', method='wbf', iou_thr=0.5))\n"
                    # Keep the low scores of barely trained members, so there is a box to fuse.
                    "model = dict(test_cfg=dict(score_thr=0.0, max_per_img=20))\n")
    return path


def load_tool() -> Any:
    return load_script("tools/train_ensemble.py")


def fake_checkpoint(path: Path, cfg: Config, classes: list[str]) -> Path:
    """An untrained detector of ``cfg`` saved like the runner saves it, with ``classes``."""
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.save({"state_dict": model.state_dict(),
                "meta": {"dataset_meta": {"classes": tuple(classes)}}}, path)
    return path


@pytest.mark.slow
def test_two_members_train_resume_and_fuse(tmp_path: Path, tiny_root: Path) -> None:
    """The tool is killed while member 1 trains, after its first checkpoint; run again, it
    resumes member 1 from there, never retrains member 0, and evaluates the fused predictions."""
    config = ensemble_config(tmp_path, tiny_root)
    work = tmp_path / "ensemble"
    tool = [sys.executable, "tools/train_ensemble.py", str(config), "--work-dir", str(work)]
    proc = subprocess.Popen(tool, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:  # mmengine writes last_checkpoint once the checkpoint file is complete
        while not (work / "member1" / "last_checkpoint").is_file():
            assert proc.poll() is None, "the tool stopped before member 1 saved a checkpoint"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the tool and the training process it started
        proc.wait()
    assert (work / "member0" / FINISHED).is_file() and not (work / "member1" / FINISHED).exists()
    member0_files = {p: p.stat().st_mtime_ns for p in (work / "member0").iterdir()}

    assert load_tool().main([str(config), "--work-dir", str(work)]) == 0
    report = json.loads((work / "ensemble.json").read_text())
    members = report["members"]
    assert [m["seed"] for m in members] == [0, 1]
    assert [s["resumed_from"] for s in members[0]["segments"]] == [None]
    assert [s["resumed_from"] for s in members[1]["segments"]] == ["iter_2.pth"]
    for path, mtime in member0_files.items():  # member 0 was not trained again
        assert path.stat().st_mtime_ns == mtime, path
    classes = [c["name"] for c in json.loads(
        (tiny_root / "annotations/val.json").read_text())["categories"]]
    assert report["classes"] == classes and len(classes) == TINY.num_classes
    assert "2 members: 2 x the training budget" in report["budget_note"]
    fused_path = Path(report["fused"]["report"])
    fused = json.loads(fused_path.read_text())
    assert fused_path.is_relative_to(work / "fused")
    assert fused["overall"] == report["fused"]["overall"]
    assert [c["name"] for c in fused["classes"]] == classes
    assert "empty_predictions" not in fused["issues"]  # the fused predictions were evaluated
    for member in members:  # each member's own final evaluation, for comparison
        assert Path(member["report"]).is_relative_to(Path(member["work_dir"]))
        assert 0 <= member["overall"]["mAP"] <= 1


@pytest.mark.slow
def test_members_trained_on_other_classes_are_refused(tmp_path: Path, tiny_root: Path) -> None:
    config = ensemble_config(tmp_path, tiny_root)
    cfg = Config.fromfile(config)
    ours = [c["name"] for c in json.loads(
        (tiny_root / "annotations/val.json").read_text())["categories"]]
    swapped = [ours[1], ours[0], *ours[2:]]
    ckpts = [fake_checkpoint(tmp_path / f"m{i}.pth", cfg, c) for i, c in enumerate((ours, swapped))]
    members = [dict(model=cfg.model, checkpoint=str(c)) for c in ckpts]
    with pytest.raises(ValueError, match=r"different class lists: member 0 .* member 1"):
        BoxFusionEnsemble(members)
    with pytest.raises(ValueError, match="at least two"):
        BoxFusionEnsemble(members[:1])

    # The tool refuses finished members that disagree, before it evaluates anything.
    work = tmp_path / "ensemble"
    for i, (ckpt, classes) in enumerate(zip(ckpts, (ours, swapped), strict=True)):
        (work / f"member{i}").mkdir(parents=True)
        member_config(cfg, i).dump(str(work / f"member{i}" / "config.py"))
        (work / f"member{i}" / FINISHED).write_text(json.dumps(dict(
            config=str(work / f"member{i}" / "config.py"), checkpoint=str(ckpt),
            classes=classes, wall_s=1.0, segments=[])))
    with pytest.raises(ValueError, match="different class lists"):
        run_ensemble(config, work, REPO)
    assert not (work / "fused").exists()

    # Members that agree with each other but not with the evaluation set.
    other = [f"other{i}" for i in range(len(ours))]
    records = [dict(config=str(work / "member0" / "config.py"),
                    checkpoint=str(fake_checkpoint(tmp_path / f"o{i}.pth", cfg, other)))
               for i in range(2)]
    with pytest.raises(ValueError, match="evaluation dataset has the classes"):
        evaluate_ensemble(cfg, records, dict(type="BoxFusion"), tmp_path / "fused")


def test_a_failed_or_interrupted_member_still_counts_in_its_wall_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process a member took is a segment of its wall time, however it ended."""
    from mmimb.strategies import training

    def interrupted(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.01)
        raise KeyboardInterrupt

    cfg = Config(dict(model=dict(type="FasterRCNN")))
    monkeypatch.setattr(training.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train_in_work_dir(cfg, tmp_path, REPO)
    segments = json.loads((tmp_path / "segments.json").read_text())
    assert len(segments) == 1 and segments[0]["seconds"] >= 0.01

    monkeypatch.setattr(training.subprocess, "run",
                        lambda cmd, **kwargs: subprocess.CompletedProcess(cmd, returncode=1))
    with pytest.raises(RuntimeError, match="failed .exit status 1"):
        training.train_in_work_dir(cfg, tmp_path, REPO)
    segments = json.loads((tmp_path / "segments.json").read_text())
    assert [s["resumed_from"] for s in segments] == [None, None]
    assert not (tmp_path / FINISHED).exists()
