"""LongTailMetric and the one-pass summary agree with pycocotools run on each group alone."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmimb.evaluation import LongTailMetric, evaluate_bbox, summarize_long_tail
from mmimb.stats import class_stats_from_coco, frequency_groups


def noisy_detections(coco: COCO, rng: np.random.Generator) -> list[dict]:
    """Jittered copies of most ground-truth boxes, some with the wrong class, plus clutter."""
    cat_ids = coco.getCatIds()
    dets = []
    for ann in coco.dataset["annotations"]:
        if rng.random() < 0.15:
            continue  # a miss
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
        cat = ann["category_id"] if rng.random() < 0.8 else int(rng.choice(cat_ids))
        dets.append({"image_id": ann["image_id"], "category_id": cat,
                     "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                     "score": float(rng.uniform(0.2, 1.0))})
    for img in coco.dataset["images"]:
        for _ in range(2):
            x, y = rng.uniform(0, img["width"] - 10, 2)
            dets.append({"image_id": img["id"], "category_id": int(rng.choice(cat_ids)),
                         "bbox": [x, y, 10.0, 10.0], "score": float(rng.uniform(0, 0.6))})
    return dets


def pycocotools_ap(coco: COCO, dets: list[dict], cat_ids: list[int]) -> tuple[float, float]:
    """AP and AP50 of a separate pycocotools run restricted to ``cat_ids``."""
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.params.catIds = cat_ids
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_groups_and_classes_match_separate_pycocotools_runs(tiny_root: Path, seed: int) -> None:
    coco = COCO(str(tiny_root / "annotations/val.json"))
    dets = noisy_detections(coco, np.random.default_rng(seed))
    cat_ids = coco.getCatIds()
    names = [c["name"] for c in coco.loadCats(cat_ids)]
    stats = class_stats_from_coco(tiny_root / "annotations/train.json")
    counts = stats.image_counts
    groups = frequency_groups(counts, rare_max=5, common_max=20)
    assert len(set(groups.tolist())) == 3, "the constructed case must populate every group"

    result = summarize_long_tail(evaluate_bbox(coco, dets, cat_ids), names, counts, groups)
    for g, name in enumerate(("rare", "common", "frequent")):
        members = [cat_ids[k] for k in np.flatnonzero(groups == g)]
        ap, ap50 = pycocotools_ap(coco, dets, members)
        assert result.groups[name]["AP"] == pytest.approx(ap, abs=1e-12)
        assert result.groups[name]["AP50"] == pytest.approx(ap50, abs=1e-12)
    for k, row in enumerate(result.classes):
        assert row["AP"] == pytest.approx(pycocotools_ap(coco, dets, [cat_ids[k]])[0], abs=1e-12)
        assert row["train_count"] == counts[k]
    assert result.overall["mAP"] == pytest.approx(pycocotools_ap(coco, dets, cat_ids)[0])


def test_perfect_and_empty_predictions(tiny_root: Path) -> None:
    coco = COCO(str(tiny_root / "annotations/val.json"))
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in coco.dataset["annotations"]]
    names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
    groups = np.array([2, 1, 0, 0])
    counts = np.array([30, 10, 3, 2])
    res = summarize_long_tail(evaluate_bbox(coco, perfect, coco.getCatIds()), names, counts,
                              groups)
    assert res.overall["mAP"] == pytest.approx(1.0)
    assert all(row["AP"] == pytest.approx(1.0) for row in res.classes)
    empty = summarize_long_tail(evaluate_bbox(coco, [], coco.getCatIds()), names, counts, groups)
    assert empty.overall["mAP"] == 0.0
    assert {g["AP"] for g in empty.groups.values()} == {0.0}


def metric_inputs(coco: COCO) -> list[tuple[dict, list[dict]]]:
    """(data_batch, data_samples) pairs in the format mmdet's CocoMetric.process expects."""
    cat_ids = coco.getCatIds()
    out = []
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                  a["bbox"][1] + a["bbox"][3]] for a in anns] or np.zeros((0, 4))
        img = coco.loadImgs([img_id])[0]
        sample = {
            "img_id": img_id, "ori_shape": (img["height"], img["width"]),
            "pred_instances": {
                "bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([cat_ids.index(a["category_id"]) for a in anns],
                                       dtype=torch.long)},
        }
        out.append(({}, [sample]))
    return out


def test_metric_end_to_end_writes_report(tiny_root: Path, tmp_path: Path) -> None:
    coco = COCO(str(tiny_root / "annotations/val.json"))
    classes = tuple(c["name"] for c in coco.loadCats(coco.getCatIds()))
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            train_ann_file=str(tiny_root / "annotations/train.json"),
                            rare_max=5, common_max=20, out_dir=str(tmp_path))
    metric.dataset_meta = {"classes": classes}
    for batch, samples in metric_inputs(coco):
        metric.process(batch, samples)
    out = metric.evaluate(len(coco.getImgIds()))
    assert out["lt/mAP"] == pytest.approx(1.0)
    assert {"lt/AP_rare", "lt/AP_common", "lt/AP_frequent"} <= set(out)
    report = json.loads((tmp_path / "long_tail.json").read_text())
    assert [r["name"] for r in report["classes"]] == list(classes)
    assert "| rare |" in (tmp_path / "long_tail.md").read_text()


def test_explicit_counts_and_auto(tiny_root: Path) -> None:
    classes = ("a", "b", "c", "d")
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            class_counts=[1, 50, 500, 5])
    assert metric._train_counts(classes).tolist() == [1, 50, 500, 5]
    auto = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"), class_counts="auto")
    with pytest.raises(ValueError, match="ClassStatsHook"):
        auto._train_counts(classes)
    with pytest.raises(ValueError, match="class_counts has 3 entries"):
        LongTailMetric(ann_file=None, class_counts=[1, 2, 3])._train_counts(classes)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of train_ann_file and class_counts"),
    ({"class_counts": [1], "train_ann_file": "x.json"}, "exactly one"),
    ({"class_counts": "sometimes"}, "class_counts must be a list or 'auto'"),
    ({"class_counts": [1], "count_by": "box"}, "count_by"),
    ({"class_counts": [1], "rare_max": 50, "common_max": 10}, "common_max"),
    ({"class_counts": [1], "rare_max": -1}, "rare_max"),
    ({"class_counts": [1], "metric": "segm"}, "metric must be 'bbox'"),
])
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LongTailMetric(**kwargs)
