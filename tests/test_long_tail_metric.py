"""LongTailMetric and the one-pass summary agree with pycocotools run on each group alone, with
hand-computed precision / recall / confusion on a constructed case, and with slow loops."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmimb.evaluation import (
    LongTailMetric,
    assign_groups,
    evaluate_bbox,
    load_result,
    precision_recall,
    summarize_long_tail,
)
from mmimb.stats import class_stats, class_stats_from_coco, frequency_groups
from tests.conftest import REPO

BCCD = REPO.parent / "shared" / "data" / "bccd"


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


def pycocotools_run(coco: COCO, dets: list[dict], cat_ids: list[int]) -> np.ndarray:
    """COCOeval's ``stats`` of a separate pycocotools run restricted to ``cat_ids``."""
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
    ev.params.catIds = cat_ids
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


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

    result = summarize_long_tail(evaluate_bbox(coco, copy.deepcopy(dets), cat_ids), names,
                                 counts, groups)
    for g, name in enumerate(("rare", "common", "frequent")):
        ref = pycocotools_run(coco, dets, [cat_ids[k] for k in np.flatnonzero(groups == g)])
        assert result.groups[name]["AP"] == pytest.approx(ref[0], abs=1e-12)
        assert result.groups[name]["AP50"] == pytest.approx(ref[1], abs=1e-12)
        assert result.groups[name]["AR"] == pytest.approx(ref[8], abs=1e-12)  # AR@100
    for k, row in enumerate(result.classes):
        ref = pycocotools_run(coco, dets, [cat_ids[k]])
        assert (row["AP"], row["AR"]) == pytest.approx((ref[0], ref[8]), abs=1e-12)
        assert row["train_count"] == counts[k]
    assert result.overall["mAP"] == pytest.approx(pycocotools_run(coco, dets, cat_ids)[0])


def test_label_order_other_than_sorted_category_ids(tiny_root: Path) -> None:
    """COCOeval sorts its category axis; classes given in another order keep their own AP."""
    data = json.loads((tiny_root / "annotations/val.json").read_text())
    data["categories"] = data["categories"][::-1]
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    cat_ids = coco.getCatIds()  # json order: decreasing ids
    assert cat_ids != sorted(cat_ids)
    names = [c["name"] for c in coco.loadCats(cat_ids)]
    dets = noisy_detections(coco, np.random.default_rng(3))
    result = summarize_long_tail(evaluate_bbox(coco, copy.deepcopy(dets), cat_ids), names,
                                 np.arange(4), np.zeros(4, dtype=int), cat_ids=cat_ids)
    for k, row in enumerate(result.classes):
        assert row["name"] == names[k]
        assert row["AP"] == pytest.approx(pycocotools_run(coco, dets, [cat_ids[k]])[0])


def constructed_case() -> tuple[COCO, list[dict]]:
    """Two images, classes a (id 1) and b (id 2), a crowd box; outcomes worked out by hand.

    Ground truth: image 1 has A (a) [0, 0, 10, 10], B (a) [50, 50, 10, 10], C (b) [20, 20, 10,
    10]; image 2 has D (b) [0, 0, 20, 20] and a crowd region of a at [60, 60, 30, 30].
    """
    gt = {"images": [{"id": 1, "width": 100, "height": 100},
                     {"id": 2, "width": 100, "height": 100}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": []}
    for i, (img, cat, box, crowd) in enumerate([
            (1, 1, [0, 0, 10, 10], 0), (1, 1, [50, 50, 10, 10], 0), (1, 2, [20, 20, 10, 10], 0),
            (2, 2, [0, 0, 20, 20], 0), (2, 1, [60, 60, 30, 30], 1)]):
        gt["annotations"].append({"id": i + 1, "image_id": img, "category_id": cat,
                                  "bbox": box, "area": box[2] * box[3], "iscrowd": crowd})
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = [
        (1, 1, [0, 0, 10, 10], 0.9),    # d1: a on A, true positive
        (1, 1, [1, 0, 10, 10], 0.8),    # d2: a on A again (IoU 0.82), A is taken: false positive
        (1, 1, [20, 20, 10, 10], 0.7),  # d3: a on C (a b box): false positive, b taken for a
        (1, 2, [50, 50, 10, 10], 0.6),  # d4: b on B (an a box): false positive, a taken for b
        (2, 2, [0, 0, 20, 20], 0.4),    # d5: b on D, true positive
        (2, 1, [65, 65, 10, 10], 0.95),  # d6: a inside the crowd region of a: ignored
        (2, 2, [80, 0, 10, 10], 0.2),   # d7: b on nothing: false positive
        (1, 2, [0, 0, 10, 10], 0.1),    # d8: b on A (matched by d1): false positive
    ]
    return coco, [{"image_id": i, "category_id": c, "bbox": b, "score": s}
                  for i, c, b, s in dets]


def test_precision_recall_f1_and_confusion_by_hand() -> None:
    coco, dets = constructed_case()
    ev = evaluate_bbox(coco, dets, [1, 2])
    res = summarize_long_tail(ev, ["a", "b"], np.array([50, 5]), np.array([2, 0]),
                              score_thr=0.5)
    a, b = res.classes
    # score >= 0.5: a keeps d1 (TP), d2, d3 (FP); b keeps d4 (FP).
    assert (a["num_gt"], a["TP"], a["FP"]) == (2, 1, 2)
    assert (a["P"], a["R"], a["F1"]) == pytest.approx((1 / 3, 1 / 2, 2 / 5))
    assert (b["num_gt"], b["TP"], b["FP"]) == (2, 0, 1)
    assert (b["P"], b["R"], b["F1"]) == (0.0, 0.0, 0.0)
    # a: F1 = 2/3 at 0.9 (1 TP), 1/2 at 0.8, 2/5 at 0.7. b: 0 at 0.6, 1/2 at 0.4, 2/5 at 0.2 ...
    assert (a["best_F1"], a["best_thr"], a["best_P"], a["best_R"]) == pytest.approx(
        (2 / 3, 0.9, 1.0, 0.5))
    assert (b["best_F1"], b["best_thr"], b["best_P"], b["best_R"]) == pytest.approx(
        (1 / 2, 0.4, 0.5, 0.5))

    at_03 = summarize_long_tail(ev, ["a", "b"], np.array([50, 5]), np.array([2, 0]),
                                score_thr=0.3)
    # Same class first: d1 -> A, d5 -> D (d6 dropped: crowd). Left-over d2, d3, d4 against the
    # free boxes B (a) and C (b): d3 -> C (truth b, predicted a), d4 -> B (truth a, predicted
    # b); d2 overlaps neither: a false alarm on background.
    np.testing.assert_array_equal(at_03.confusion, [[1, 1, 0], [1, 1, 0], [1, 0, 0]])


def test_best_threshold_keeps_tied_scores_together() -> None:
    # One class, 2 boxes; scores 0.9 (TP), 0.5 (TP), 0.5 (FP), 0.2 (FP). Cutting between the two
    # 0.5s is impossible, so F1 at 0.5 is 2*2 / (3 + 2) = 0.8, not 2*2 / (2 + 2) = 1.
    pr = precision_recall(np.zeros(4, dtype=np.int64), np.array([0.9, 0.5, 0.5, 0.2]),
                          np.array([True, False, True, False]), np.array([2]), score_thr=0.5)
    assert pr.best_f1[0] == pytest.approx(0.8)
    assert pr.best_thr[0] == 0.5
    assert (pr.tp[0], pr.fp[0], pr.precision[0]) == (2, 1, pytest.approx(2 / 3))
    # A class without ground truth: recall and F1 undefined (-1), precision 0 if it predicted.
    pr = precision_recall(np.array([1]), np.array([0.7]), np.array([False]), np.array([3, 0]))
    assert (pr.precision[1], pr.recall[1], pr.f1[1], pr.best_f1[1]) == (0.0, -1.0, -1.0, -1.0)
    assert (pr.precision[0], pr.recall[0], pr.f1[0], pr.best_thr[0]) == (0.0, 0.0, 0.0, -1.0)


def greedy_reference(coco: COCO, dets: list[dict], score_thr: float,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slow loops: TP and FP per class at ``score_thr``, and the two-stage confusion matrix.

    Per image and class, detections in decreasing score order (first 100) take the free
    non-crowd box of their class with the best IoU >= 0.5 (the later box on ties); a detection
    without one that lies on a crowd box of its class (IoU >= 0.5) is ignored. Then the
    left-over detections of the image, by score, take free boxes of any class.
    """
    cat_ids = coco.getCatIds()
    label = {c: k for k, c in enumerate(cat_ids)}
    tp, fp = np.zeros(num_classes, int), np.zeros(num_classes, int)
    conf = np.zeros((num_classes + 1, num_classes + 1), int)
    for img_id in coco.getImgIds():
        gts = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        mine = [d for d in dets if d["image_id"] == img_id]
        taken = [False] * len(gts)
        left = []
        for cat in cat_ids:
            ds = sorted((d for d in mine if d["category_id"] == cat),
                        key=lambda d: -d["score"])[:100]
            for d in ds:
                if d["score"] < score_thr:
                    continue
                best, best_iou, on_crowd = -1, 0.5, False
                for j, g in enumerate(gts):
                    if g["category_id"] != cat:
                        continue
                    iou = mask_utils.iou([d["bbox"]], [g["bbox"]], [g["iscrowd"]])[0, 0]
                    if g["iscrowd"]:
                        on_crowd |= iou >= 0.5
                    elif not taken[j] and iou >= best_iou:
                        best, best_iou = j, iou
                if best >= 0:
                    taken[best] = True
                    tp[label[cat]] += 1
                    conf[label[cat], label[cat]] += 1
                elif not on_crowd:
                    fp[label[cat]] += 1
                    left.append(d)
        for d in sorted(left, key=lambda d: -d["score"]):
            best, best_iou = -1, 0.5
            for j, g in enumerate(gts):
                if g["iscrowd"] or taken[j]:
                    continue
                iou = mask_utils.iou([d["bbox"]], [g["bbox"]], [0])[0, 0]
                if iou >= best_iou:
                    best, best_iou = j, iou
            col = label[d["category_id"]]
            if best >= 0:
                taken[best] = True
                conf[label[gts[best]["category_id"]], col] += 1
            else:
                conf[num_classes, col] += 1
        for j, g in enumerate(gts):
            if not taken[j] and not g["iscrowd"]:
                conf[label[g["category_id"]], num_classes] += 1
    return tp, fp, conf


@pytest.mark.parametrize("seed, score_thr", [(0, 0.3), (1, 0.6)])
def test_pr_and_confusion_match_slow_loops(tiny_root: Path, seed: int, score_thr: float) -> None:
    rng = np.random.default_rng(seed)
    data = json.loads((tiny_root / "annotations/val.json").read_text())
    for ann in data["annotations"][:: 7]:  # a few crowd boxes
        ann["iscrowd"] = 1
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    dets = noisy_detections(coco, rng)
    dets += [dict(d, score=d["score"] * 0.9) for d in dets[::5]]  # duplicates
    result = summarize_long_tail(evaluate_bbox(coco, copy.deepcopy(dets), coco.getCatIds()),
                                 list("abcd"), np.arange(4), np.zeros(4, int),
                                 score_thr=score_thr)
    tp, fp, conf = greedy_reference(coco, dets, score_thr, 4)
    assert [r["TP"] for r in result.classes] == tp.tolist()
    assert [r["FP"] for r in result.classes] == fp.tolist()
    np.testing.assert_array_equal(result.confusion, conf)
    assert conf[:4, :4].sum() > np.trace(conf), "the case must contain confusions"


def metric_inputs(coco: COCO, dets: list[dict] | None = None,
                  with_gt: bool = False) -> list[tuple[dict, list[dict]]]:
    """(data_batch, data_samples) pairs in the format mmdet's CocoMetric.process expects.

    Predictions are ``dets`` (COCO results), or every ground-truth box with score 1.
    """
    cat_ids = coco.getCatIds()
    if dets is None:
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                 "score": 1.0} for a in coco.dataset["annotations"]]
    out = []
    for img_id in coco.getImgIds():
        mine = [d for d in dets if d["image_id"] == img_id]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]
        img = coco.loadImgs([img_id])[0]
        sample = {
            "img_id": img_id, "ori_shape": (img["height"], img["width"]),
            "pred_instances": {
                "bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float32),
                "labels": torch.tensor([cat_ids.index(d["category_id"]) for d in mine],
                                       dtype=torch.long)},
        }
        if with_gt:
            sample["instances"] = [
                {"bbox": [x, y, x + w, y + h], "bbox_label": cat_ids.index(a["category_id"]),
                 "ignore_flag": a.get("iscrowd", 0)}
                for a in coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
                for x, y, w, h in [a["bbox"]]]
        out.append(({}, [sample]))
    return out


def run_metric(metric: LongTailMetric, coco: COCO, classes: tuple[str, ...],
               dets: list[dict] | None = None, with_gt: bool = False) -> dict[str, float]:
    metric.dataset_meta = {"classes": classes}
    for batch, samples in metric_inputs(coco, dets, with_gt):
        metric.process(batch, samples)
    return metric.evaluate(len(coco.getImgIds()))


def test_metric_end_to_end_writes_report(tiny_root: Path, tmp_path: Path) -> None:
    coco = COCO(str(tiny_root / "annotations/val.json"))
    classes = tuple(c["name"] for c in coco.loadCats(coco.getCatIds()))
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            train_ann_file=str(tiny_root / "annotations/train.json"),
                            rare_max=5, common_max=20, out_dir=str(tmp_path))
    out = run_metric(metric, coco, classes)
    assert out["lt/mAP"] == pytest.approx(1.0)
    assert out["lt/F1"] == pytest.approx(1.0)
    assert {"lt/AP_rare", "lt/AP_common", "lt/AP_frequent"} <= set(out)
    report = json.loads((tmp_path / "long_tail.json").read_text())
    assert [r["name"] for r in report["classes"]] == list(classes)
    assert "| rare |" in (tmp_path / "long_tail.md").read_text()
    rows = list(csv.DictReader((tmp_path / "long_tail_classes.csv").open()))
    assert [float(r["F1"]) for r in rows] == [1.0] * 4
    assert [int(r["num_gt"]) for r in rows] == [6] * 4
    matrix = list(csv.reader((tmp_path / "long_tail_confusion.csv").open()))
    assert matrix[0][1:] == [*classes, "background"]
    assert [row[1:] for row in matrix[1:]] == [
        [str(6 * (i == j < 4)) for j in range(5)] for i in range(5)]
    loaded = load_result(tmp_path / "long_tail.json")
    np.testing.assert_array_equal(loaded.confusion, np.diag([6, 6, 6, 6, 0]))
    assert loaded.classes == metric.result.classes


def test_metric_takes_training_stats_of_a_dataset(tiny_root: Path) -> None:
    """``class_counts='auto'``: counts handed over by ``set_class_stats`` (hook path)."""
    from mmdet.datasets import CocoDataset
    coco = COCO(str(tiny_root / "annotations/val.json"))
    classes = tuple(c["name"] for c in coco.loadCats(coco.getCatIds()))
    train = CocoDataset(data_root=str(tiny_root), ann_file="annotations/train.json",
                        data_prefix={"img": "train/"}, metainfo={"classes": classes}, pipeline=[],
                        filter_cfg={"filter_empty_gt": False})
    stats = class_stats(train)
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"), class_counts="auto",
                            count_by="instance", group_by="quantile", quantiles=(0.25, 0.75))
    assert metric.counts_from_dataset  # what a hook looks for
    metric.set_class_stats(stats)
    run_metric(metric, coco, classes)
    assert metric.result is not None
    counts = [r["train_count"] for r in metric.result.classes]
    assert counts == stats.instance_counts.tolist()
    expected = assign_groups(stats.instance_counts, "quantile", quantiles=(0.25, 0.75))
    assert [r["group"] for r in metric.result.classes] == [
        ("rare", "common", "frequent")[g] for g in expected.groups]
    assert metric.result.grouping == "quantile"


def test_quantile_and_frequency_grouping() -> None:
    g = assign_groups(np.array([6, 1, 5, 2, 4, 3]), "quantile")
    assert g.groups.tolist() == [2, 0, 2, 0, 1, 1]
    assert (g.thresholds["rare_max"], g.thresholds["common_max"]) == (2, 4)
    tied = assign_groups(np.array([5, 5, 5, 1]), "quantile", quantiles=(0.2, 0.5))
    assert tied.groups.tolist() == [1, 1, 1, 0]  # equal counts share a group
    letters = assign_groups(np.array([1000, 1, 50]), "auto", frequency=["r", "f", "c"])
    assert (letters.rule, letters.groups.tolist()) == ("frequency", [0, 2, 1])
    assert assign_groups(np.array([1000, 1, 50]), "auto").groups.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="frequency must be one of"):
        assign_groups(np.array([1]), "frequency", frequency=["x"])
    with pytest.raises(ValueError, match="needs an LVIS `frequency` letter"):
        assign_groups(np.array([1]), "frequency")


def lvis_like(tiny_root: Path, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """The tiny val split in LVIS format, and an LVIS category-info file for training."""
    val = json.loads((tiny_root / "annotations/val.json").read_text())
    letters = ["r", "r", "c", "f"]  # not what the training counts would give
    for cat, letter in zip(val["categories"], letters, strict=True):
        cat["frequency"] = letter
    for img in val["images"]:
        img["neg_category_ids"], img["not_exhaustive_category_ids"] = [], []
    for ann in val["annotations"]:
        ann.pop("iscrowd", None)
    stats = class_stats_from_coco(tiny_root / "annotations/train.json")
    cat_info = [{"id": c["id"], "name": c["name"], "frequency": c["frequency"],
                 "image_count": int(n), "instance_count": int(m)}
                for c, n, m in zip(val["categories"], stats.image_counts, stats.instance_counts,
                                   strict=True)]
    (tmp_path / "lvis_val.json").write_text(json.dumps(val))
    (tmp_path / "cat_info.json").write_text(json.dumps(cat_info))
    return tmp_path / "lvis_val.json", tmp_path / "cat_info.json", letters


def test_lvis_format_groups_from_frequency_field(tiny_root: Path, tmp_path: Path) -> None:
    val, cat_info, letters = lvis_like(tiny_root, tmp_path)
    coco = COCO(str(val))
    classes = tuple(c["name"] for c in coco.loadCats(coco.getCatIds()))
    dets = noisy_detections(coco, np.random.default_rng(5))
    metric = LongTailMetric(ann_file=str(val), train_ann_file=str(cat_info), rare_max=5,
                            common_max=20, out_dir=str(tmp_path / "out"))
    run_metric(metric, coco, classes, copy.deepcopy(dets))
    res = metric.result
    assert res is not None and res.grouping == "frequency"
    by_letter = {"r": "rare", "c": "common", "f": "frequent"}
    assert [r["group"] for r in res.classes] == [by_letter[x] for x in letters]
    assert "lvis_federated" in res.issues
    cat_ids = coco.getCatIds()
    for ann in coco.dataset["annotations"]:  # pycocotools needs iscrowd, LVIS json has none
        ann["iscrowd"] = 0
    ref = pycocotools_run(coco, dets, cat_ids[:2])  # the two 'r' classes
    assert res.groups["rare"]["AP"] == pytest.approx(ref[0], abs=1e-6)
    # The letters can also come from the evaluated LVIS json when counts are explicit.
    explicit = LongTailMetric(ann_file=str(val), class_counts=[1, 2, 3, 4])
    run_metric(explicit, coco, classes, copy.deepcopy(dets))
    assert explicit.result is not None and explicit.result.grouping == "threshold"
    from_val = LongTailMetric(ann_file=str(val), class_counts=[1, 2, 3, 4], group_by="frequency")
    run_metric(from_val, coco, classes, copy.deepcopy(dets))
    assert from_val.result is not None
    assert [r["group"] for r in from_val.result.classes] == [by_letter[x] for x in letters]


@pytest.mark.skipif(not (BCCD / "BCCD").is_dir(), reason="../shared/data/bccd is not available")
def test_metric_on_bccd_voc_with_ground_truth_from_the_dataset() -> None:
    """mmdet's VOCDataset on real data, ``ann_file=None``: the metric converts the dataset's
    ground truth; training counts come from the VOC reader of the analysis package."""
    from mmdet.datasets import VOCDataset

    from mmimb.analysis.voc import read_voc
    train = read_voc(BCCD / "BCCD", "train")
    classes = train.classes
    val = VOCDataset(data_root=str(BCCD), ann_file="BCCD/ImageSets/Main/val.txt",
                     data_prefix={"sub_data_root": "BCCD/"}, metainfo={"classes": classes},
                     test_mode=True, pipeline=[])
    rng = np.random.default_rng(0)
    metric = LongTailMetric(class_counts="auto", count_by="instance", rare_max=400,
                            common_max=1000)
    metric.set_class_stats(train.stats)
    metric.dataset_meta = {"classes": classes}
    dets = []  # the same predictions as COCO results (converted category ids = labels)
    for idx in range(len(val)):
        info = val.get_data_info(idx)
        gt = np.array([i["bbox"] for i in info["instances"]], dtype=np.float32).reshape(-1, 4)
        labels = np.array([i["bbox_label"] for i in info["instances"]], dtype=np.int64)
        keep = rng.random(len(gt)) < 0.9
        boxes = gt[keep] + rng.normal(0, 4, (int(keep.sum()), 4)).astype(np.float32)
        scores = rng.uniform(0.1, 1, len(boxes)).astype(np.float32)
        sample = {"img_id": info["img_id"], "ori_shape": (info["height"], info["width"]),
                  "instances": info["instances"],
                  "pred_instances": {"bboxes": torch.from_numpy(boxes),
                                     "scores": torch.from_numpy(scores),
                                     "labels": torch.from_numpy(labels[keep])}}
        metric.process({}, [sample])
        dets += [{"image_id": info["img_id"], "category_id": int(c), "score": float(s),
                  "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                 for b, c, s in zip(boxes, labels[keep], scores, strict=True)]
    metric.evaluate(len(val))
    res = metric.result
    assert res is not None and metric._coco_api is not None
    # Groups by training instances: Platelets and WBC rare (< 400), RBC frequent.
    assert {r["name"]: r["group"] for r in res.classes} == {
        "RBC": "frequent", "WBC": "rare", "Platelets": "rare"}
    assert "degenerate_gt_boxes" in res.issues  # BloodImage_00338 has a zero-size RBC box
    rare = [classes.index("WBC"), classes.index("Platelets")]
    ref = pycocotools_run(metric._coco_api, dets, rare)
    assert res.groups["rare"]["AP"] == pytest.approx(ref[0], abs=1e-12)
    np.testing.assert_array_equal(res.confusion[:3].sum(axis=1),
                                  [r["num_gt"] for r in res.classes])


def test_explicit_counts_and_auto(tiny_root: Path) -> None:
    classes = ("a", "b", "c", "d")
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            class_counts=[1, 50, 500, 5])
    assert metric._train_counts(classes).tolist() == [1, 50, 500, 5]
    auto = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"), class_counts="auto")
    with pytest.raises(ValueError, match="set_class_stats"):
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
    ({"class_counts": [1], "group_by": "size"}, "group_by must be one of"),
    ({"class_counts": [1], "quantiles": (0.8, 0.2)}, "quantiles"),
    ({"class_counts": [1], "score_thr": 1.5}, "score_thr"),
    ({"class_counts": [1], "degenerate_gt": "drop"}, "degenerate_gt must be one of"),
])
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LongTailMetric(**kwargs)
