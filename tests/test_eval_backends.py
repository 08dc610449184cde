"""faster-coco-eval and pycocotools give the same long-tail report, number for number.

Every number of the report (COCO stats, per-class and per-group AP / AP50 / AR, TP / FP / P / R /
F1 and the best-F1 point, the confusion matrix) is compared between the two backends on sets
made to hit COCOeval's special cases; AP also against a plain pycocotools run (its own
``loadRes``), and precision / recall against the matches pycocotools keeps in ``evalImgs``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmdet.evaluation.metrics import CocoMetric
from mmdet.registry import METRICS
from mmengine.fileio import load
from pycocotools.coco import COCO

from mmimb.evaluation import (
    LongTailMetric,
    LongTailResult,
    evaluate_bbox,
    load_result,
    precision_recall,
    summarize_long_tail,
)
from mmimb.evaluation.long_tail import EVAL_BACKENDS
from mmimb.evaluation.matching import ClassPR, eval_columns
from mmimb.stats import class_stats_from_coco, frequency_groups
from tests.test_long_tail_metric import (
    metric_inputs,
    noisy_detections,
    pycocotools_run,
    run_metric,
)

BACKENDS = tuple(EVAL_BACKENDS)
NUM_CLASSES = 6
SIZE = 200
#: Training counts that put two classes in each of rare (<= 10), common (<= 100), frequent.
TRAIN_COUNTS = np.array([500, 200, 60, 30, 5, 2])

CASES = ("random", "crowd_and_zero_size", "images_without_boxes", "classes_without_detections",
         "tied_scores", "over_max_dets", "no_detections", "string_image_ids")


def make_case(name: str, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dict and detections: jittered boxes, wrong classes, clutter.

    Classes are drawn with frequencies 1/k; ``name`` adds its special case.
    """
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, NUM_CLASSES + 1)
    images, anns = [], []
    for i in range(1, 41):
        images.append({"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.jpg"})
        empty = name == "images_without_boxes" and i % 3 == 0
        for _ in range(0 if empty else rng.integers(1, 7)):
            w, h = rng.uniform(10, 80, 2)
            x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            anns.append({"id": len(anns) + 1, "image_id": i, "bbox": [x, y, w, h],
                         "category_id": int(rng.choice(NUM_CLASSES, p=freq / freq.sum())) + 1,
                         "area": w * h, "iscrowd": 0})
    if name == "crowd_and_zero_size":
        for ann in anns[::5]:
            ann["iscrowd"] = 1
        anns[1]["bbox"][2] = anns[1]["area"] = 0.0  # a box of zero width: a miss
    if name == "classes_without_detections":  # class 6: neither; class 5: only detections
        anns = [a for a in anns if a["category_id"] not in (5, 6)]
    dets = []
    for ann in anns:
        x, y, w, h = ann["bbox"]
        for _ in range(rng.integers(0, 3)):  # a miss, a hit, a duplicate
            jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
            cat = ann["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 7))
            dets.append({"image_id": ann["image_id"], "category_id": cat,
                         "bbox": [x + jitter[0], y + jitter[1], abs(w + jitter[2]) + 1,
                                  abs(h + jitter[3]) + 1], "score": float(rng.uniform(0.05, 1))})
    for img in images:  # clutter, also on images without boxes
        for _ in range(3):
            x, y = rng.uniform(0, SIZE - 20, 2)
            dets.append({"image_id": img["id"], "category_id": int(rng.integers(1, 7)),
                         "bbox": [x, y, 20.0, 20.0], "score": float(rng.uniform(0, 0.7))})
    if name == "classes_without_detections":
        dets = [d for d in dets if d["category_id"] not in (4, 6)]  # class 4: only boxes
    if name == "over_max_dets":  # 150 detections of one class on one image: COCOeval keeps 100
        target = next(a for a in anns if a["image_id"] == 1)
        x, y, w, h = target["bbox"]
        dets += [{"image_id": 1, "category_id": target["category_id"], "score": float(s),
                  "bbox": [x + dx, y + dy, w, h]}
                 for s, dx, dy in zip(rng.uniform(0, 1, 150), *rng.normal(0, 0.1 * w, (2, 150)),
                                      strict=True)]
    if name in ("tied_scores", "string_image_ids"):  # three score levels, exact duplicates
        for d in dets:
            d["score"] = float(rng.choice([0.25, 0.5, 0.75]))
        dets += [copy.deepcopy(d) for d in dets[::4]]
    if name == "no_detections":
        dets = []
    data = {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(NUM_CLASSES)]}
    if name == "string_image_ids":  # as mmdet's VOCDataset; 'img10' sorts before 'img2'
        for item in images + anns + dets:
            key = "id" if "file_name" in item else "image_id"
            item[key] = f"img{item[key]}"
    return data, dets


def index(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(data)
    coco.createIndex()
    return coco


def report(data: dict, dets: list[dict], backend: str, score_thr: float = 0.3
           ) -> tuple[LongTailResult, Any]:
    coco = index(data)
    coco_eval = evaluate_bbox(coco, copy.deepcopy(dets), coco.getCatIds(), backend=backend)
    names = [f"c{k}" for k in range(NUM_CLASSES)]
    groups = frequency_groups(TRAIN_COUNTS, rare_max=10, common_max=100)
    return (summarize_long_tail(coco_eval, names, TRAIN_COUNTS, groups, score_thr=score_thr),
            coco_eval)


def assert_same(a: Any, b: Any, where: str = "report") -> None:
    """Equal structure; floats equal to 1e-12, everything else exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= 1e-12, f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("score_thr", [0.3, 0.6])
def test_every_number_of_the_report_is_the_same_in_both_backends(case: str,
                                                                  score_thr: float) -> None:
    data, dets = make_case(case)
    fast, fast_eval = report(data, dets, "faster_coco_eval", score_thr)
    ref, ref_eval = report(data, dets, "pycocotools", score_thr)
    assert_same(fast.to_dict(), ref.to_dict())
    np.testing.assert_array_equal(fast.confusion, ref.confusion)
    # Beyond the report: COCOeval's whole precision / recall arrays and its stats.
    for key in ("precision", "recall"):
        np.testing.assert_allclose(fast_eval.eval[key], ref_eval.eval[key], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast_eval.stats, ref_eval.stats, rtol=0, atol=1e-12)
    if case == "no_detections":  # pycocotools' loadRes refuses an empty list
        assert fast.overall["mAP"] == 0.0 and fast.confusion.trace() == 0
        return
    # And against a plain pycocotools run (its own loadRes, string ids left as they are).
    coco = index(data)
    np.testing.assert_allclose(list(fast.overall.values())[:12],
                               pycocotools_run(coco, dets, coco.getCatIds()), rtol=0, atol=1e-12)
    # The sets are not trivial: some AP, confusions between classes (at the low threshold).
    assert 0.01 < fast.overall["mAP"] < 0.95
    classes = fast.confusion[:NUM_CLASSES, :NUM_CLASSES]
    assert score_thr > 0.3 or classes.sum() > np.trace(classes)
    assert {r["group"] for r in fast.classes} == {"rare", "common", "frequent"}


def eval_imgs_pr(coco_eval: Any, cat_ids: list[int], score_thr: float) -> ClassPR:
    """Precision / recall from the matches pycocotools stores in ``evalImgs`` (IoU 0.5, area
    ``all``): a slow loop over its per-image entries."""
    p = coco_eval.params
    t = int(np.flatnonzero(np.isclose(p.iouThrs, 0.5))[0])
    num_img, num_area = len(p.imgIds), len(p.areaRng)
    classes, scores, hits = [], [], []
    num_gt = np.zeros(len(cat_ids), dtype=np.int64)
    for k, col in enumerate(eval_columns(coco_eval, cat_ids)):
        for entry in coco_eval.evalImgs[col * num_area * num_img:][:num_img]:  # area 'all'
            if entry is None:
                continue
            num_gt[k] += int(np.count_nonzero(~np.asarray(entry["gtIgnore"], dtype=bool)))
            for score, match, ignored in zip(entry["dtScores"], entry["dtMatches"][t],
                                             entry["dtIgnore"][t], strict=True):
                if not ignored:
                    classes.append(k)
                    scores.append(score)
                    hits.append(match > 0)
    return precision_recall(np.array(classes, dtype=np.int64), np.array(scores, dtype=float),
                            np.array(hits, dtype=bool), num_gt, score_thr)


@pytest.mark.parametrize("case", CASES)
def test_precision_recall_equal_those_of_pycocotools_eval_imgs(case: str) -> None:
    data, dets = make_case(case)
    result, coco_eval = report(data, dets, "pycocotools", score_thr=0.3)
    ref = eval_imgs_pr(coco_eval, coco_eval.params.catIds, 0.3)
    columns = {"num_gt": ref.num_gt, "TP": ref.tp, "FP": ref.fp, "P": ref.precision,
               "R": ref.recall, "F1": ref.f1, "best_F1": ref.best_f1, "best_thr": ref.best_thr,
               "best_P": ref.best_precision, "best_R": ref.best_recall}
    for key, values in columns.items():
        np.testing.assert_array_equal([r[key] for r in result.classes], values, err_msg=key)


def test_string_image_ids_are_renumbered_on_copies() -> None:
    """faster-coco-eval needs integer image ids: the caller's dicts keep theirs."""
    data, dets = make_case("string_image_ids")
    coco = index(data)
    before_gt, before_dets = copy.deepcopy(coco.dataset), copy.deepcopy(dets)
    coco_eval = evaluate_bbox(coco, dets, coco.getCatIds())
    assert coco.dataset == before_gt and dets == before_dets
    # 'img1' < 'img10' < ... < 'img2': numbered in the order of the ids, as COCOeval sorts them.
    ids = sorted(img["id"] for img in data["images"])
    assert coco_eval.params.imgIds == list(range(1, len(ids) + 1))
    renumbered = {img["file_name"]: img["id"] for img in coco_eval.cocoGt.dataset["images"]}
    assert renumbered["10.jpg"] == ids.index("img10") + 1 == 2


def test_metric_from_a_config_dict_with_each_backend(tiny_root: Path, tmp_path: Path) -> None:
    ann_file = str(tiny_root / "annotations/val.json")
    coco = COCO(ann_file)
    dets = noisy_detections(coco, np.random.default_rng(3))
    classes = tuple(c["name"] for c in coco.loadCats(coco.getCatIds()))
    counts = class_stats_from_coco(tiny_root / "annotations/train.json").image_counts.tolist()
    out = {}
    for name in BACKENDS:
        metric = METRICS.build(dict(type="LongTailMetric", ann_file=ann_file, class_counts=counts,
                                    out_dir=str(tmp_path / name), backend=name))
        assert isinstance(metric, LongTailMetric) and metric.backend == name
        out[name] = run_metric(metric, coco, classes, copy.deepcopy(dets))
    assert_same(out["faster_coco_eval"], out["pycocotools"])
    assert_same(load_result(tmp_path / "faster_coco_eval" / "long_tail.json").to_dict(),
                load_result(tmp_path / "pycocotools" / "long_tail.json").to_dict())
    reference = CocoMetric(ann_file=ann_file)  # mmdet's, with pycocotools
    reference.dataset_meta = {"classes": classes}
    for batch, samples in metric_inputs(coco, copy.deepcopy(dets)):
        reference.process(batch, samples)
    coco_map = reference.evaluate(len(coco.getImgIds()))["coco/bbox_mAP"]
    assert round(out["faster_coco_eval"]["lt/mAP"], 3) == coco_map > 0


def test_results_in_memory_equal_those_of_results2json(tiny_root: Path, tmp_path: Path) -> None:
    """LongTailMetric skips mmdet's json round trip: the same dicts, and the same file when
    ``outfile_prefix`` asks for one."""
    ann_file = str(tiny_root / "annotations/val.json")
    coco = COCO(ann_file)
    classes = tuple(c["name"] for c in coco.loadCats(coco.getCatIds()))
    dets = noisy_detections(coco, np.random.default_rng(4))
    metric = LongTailMetric(ann_file=ann_file, class_counts=[1, 2, 3, 4],
                            outfile_prefix=str(tmp_path / "mine"), out_dir=str(tmp_path))
    run_metric(metric, coco, classes, copy.deepcopy(dets))
    reference = CocoMetric(ann_file=ann_file)  # what it stores, and its results2json
    reference.dataset_meta, reference.cat_ids = {"classes": classes}, coco.getCatIds()
    for batch, samples in metric_inputs(coco, dets):
        reference.process(batch, samples)
    preds = [pred for _, pred in reference.results]
    expected = load(reference.results2json(preds, str(tmp_path / "mmdet"))["bbox"])
    assert metric._coco_results(preds) == expected
    assert load(tmp_path / "mine.bbox.json") == expected
    assert len(expected) == len(dets) > 0


def test_default_backend_is_faster_coco_eval(tiny_root: Path) -> None:
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            class_counts=[1, 2, 3, 4])
    assert metric.backend == "faster_coco_eval"
    data, dets = make_case("random")
    coco = index(data)
    assert type(evaluate_bbox(coco, dets, coco.getCatIds())).__module__.startswith(
        "faster_coco_eval")


@pytest.mark.parametrize("bad", ["faster-coco-eval", "detectron2", "", None])
def test_invalid_backend_is_refused(tiny_root: Path, bad: Any) -> None:
    message = re.escape(f"backend must be one of ('faster_coco_eval', 'pycocotools'), got {bad!r}")
    with pytest.raises(ValueError, match=message):
        LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                       class_counts=[1, 2, 3, 4], backend=bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        METRICS.build(dict(type="LongTailMetric", class_counts="auto", backend=bad))
    data, dets = make_case("random")
    coco = index(data)
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate_bbox(coco, dets, coco.getCatIds(), backend=bad)
