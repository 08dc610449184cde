"""Evaluation time of ``LongTailMetric`` against mmdet's ``CocoMetric`` on the same predictions.

A synthetic COCO-format validation set (``--sizes IMAGESxCLASSES``: class frequencies follow a
power law, about 7 boxes per image) gets predictions that look like a detector's: jittered
ground-truth boxes (some with a wrong class), duplicates and clutter, up to ``--dets`` per image,
random scores. Both metrics receive the same ``process()`` inputs; the time measured is
``metric.evaluate()``, i.e. ``compute_metrics``: results to json, ``loadRes``, COCOeval's
``evaluate``, ``accumulate``, ``summarize``, and for ``LongTailMetric`` also the per-class and
group summary, precision / recall / F1 from ``evalImgs``, the confusion matrix and the report
files (JSON, Markdown, two CSVs). ``CocoMetric`` runs with its defaults (``classwise=False``).

Time: median (and minimum) of ``--repeats`` runs after one warm-up run per metric; the two
metrics alternate within each repeat, so load from other processes affects them alike. Both the
ratio of the medians and that of the minima (the runs least disturbed by other processes) are
printed. A breakdown times the extra steps of ``LongTailMetric`` alone on
one evaluated ``COCOeval``.

Usage::

    python benchmarks/eval_speed.py                         # 500x20 and 2000x80
    python benchmarks/eval_speed.py --sizes 5000x80 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from mmdet.evaluation.metrics import CocoMetric
from mmengine.logging import MMLogger
from pycocotools.coco import COCO

from mmimb.evaluation import LongTailMetric, evaluate_bbox, write_report
from mmimb.evaluation.long_tail import eval_confusion, summarize_long_tail
from mmimb.evaluation.matching import matched_detections, precision_recall
from mmimb.stats import class_stats_from_coco

SIZE = 640


def synthetic_gt(num_images: int, num_classes: int, rng: np.random.Generator) -> dict:
    """A COCO dict: ``num_images`` images of 640x640, 1-13 boxes each, Zipf class frequencies."""
    p = 1.0 / np.arange(1, num_classes + 1)
    p /= p.sum()
    images, anns = [], []
    for img_id in range(1, num_images + 1):
        images.append({"id": img_id, "width": SIZE, "height": SIZE, "file_name": f"{img_id}.jpg"})
        for _ in range(rng.integers(1, 14)):
            w, h = rng.uniform(8, 200, 2)
            x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            anns.append({"id": len(anns) + 1, "image_id": img_id,
                         "category_id": int(rng.choice(num_classes, p=p)) + 1,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": k + 1, "name": f"class_{k}"} for k in range(num_classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def synthetic_samples(gt: dict, max_dets: int, rng: np.random.Generator) -> list[dict]:
    """One ``process()`` data sample per image: predictions near the boxes, plus clutter."""
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    num_classes = len(gt["categories"])
    samples = []
    for img_id, anns in by_image.items():
        boxes, labels = [], []
        for ann in anns:
            for _ in range(rng.integers(1, 4)):  # a hit and some duplicates
                x, y, w, h = np.array(ann["bbox"]) + rng.normal(0, 0.1, 4) * np.repeat(
                    ann["bbox"][2:], 2)
                boxes.append([x, y, x + abs(w), y + abs(h)])
                wrong = rng.random() < 0.15
                labels.append(rng.integers(num_classes) if wrong else ann["category_id"] - 1)
        while len(boxes) < max_dets:  # clutter
            x, y = rng.uniform(0, SIZE - 40, 2)
            boxes.append([x, y, x + rng.uniform(8, 40), y + rng.uniform(8, 40)])
            labels.append(rng.integers(num_classes))
        boxes, labels = boxes[:max_dets], labels[:max_dets]
        samples.append({"img_id": img_id, "ori_shape": (SIZE, SIZE), "pred_instances": {
            "bboxes": torch.tensor(np.array(boxes), dtype=torch.float32),
            "scores": torch.from_numpy(rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32)),
            "labels": torch.tensor(labels, dtype=torch.long)}})
    return samples


def run_metric(make: Callable[[], CocoMetric], samples: list[dict], classes: tuple[str, ...]
               ) -> tuple[float, dict[str, float]]:
    """Seconds of ``evaluate()`` of a fresh metric fed ``samples``, and its result."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
        metric = make()
        metric.dataset_meta = {"classes": classes}
        for sample in samples:
            metric.process({}, [sample])
        start = time.perf_counter()
        out = metric.evaluate(len(samples))
        seconds = time.perf_counter() - start
    return seconds, out


def breakdown(ann_file: str, samples: list[dict], classes: tuple[str, ...],
              out_dir: str) -> dict[str, float]:
    """Seconds of COCOeval and of each extra step of LongTailMetric, on one evaluation."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
    cat_ids = coco.getCatIds()
    dets = [{"image_id": s["img_id"], "category_id": cat_ids[int(label)], "score": float(score),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for s in samples for b, score, label in zip(
                s["pred_instances"]["bboxes"].numpy(), s["pred_instances"]["scores"].numpy(),
                s["pred_instances"]["labels"].numpy(), strict=True)]
    out: dict[str, float] = {}
    start = time.perf_counter()
    coco_eval = evaluate_bbox(coco, dets, cat_ids)
    out["COCOeval (loadRes, evaluate, accumulate, summarize)"] = time.perf_counter() - start
    start = time.perf_counter()
    precision_recall(*matched_detections(coco_eval, cat_ids))
    out["P / R / F1 from evalImgs"] = time.perf_counter() - start
    start = time.perf_counter()
    eval_confusion(coco_eval, cat_ids, 0.3)
    out["confusion matrix"] = time.perf_counter() - start
    counts = np.arange(len(classes))
    result = summarize_long_tail(coco_eval, classes, counts, np.zeros(len(classes), int))
    start = time.perf_counter()
    write_report(result, out_dir)
    out["report files"] = time.perf_counter() - start
    return out


def bench_size(num_images: int, num_classes: int, args: argparse.Namespace,
               tmp: Path) -> tuple[str, list[str]]:
    """The table row of one synthetic set, and the rows of its step-by-step breakdown."""
    rng = np.random.default_rng(args.seed)
    gt = synthetic_gt(num_images, num_classes, rng)
    ann_file = str(tmp / f"gt_{num_images}x{num_classes}.json")
    Path(ann_file).write_text(json.dumps(gt))
    samples = synthetic_samples(gt, args.dets, rng)
    classes = tuple(c["name"] for c in gt["categories"])
    counts = class_stats_from_coco(gt).image_counts.tolist()
    makers: dict[str, Callable[[], CocoMetric]] = {
        "CocoMetric": partial(CocoMetric, ann_file=ann_file),
        "LongTailMetric": partial(LongTailMetric, ann_file=ann_file, class_counts=counts,
                                  out_dir=str(tmp / "report")),
    }
    results = {name: run_metric(make, samples, classes)[1]  # warm-up
               for name, make in makers.items()}
    if abs(results["CocoMetric"]["coco/bbox_mAP"] - round(results["LongTailMetric"]["lt/mAP"],
                                                          3)) > 1e-9:
        raise RuntimeError(f"the two metrics disagree: {results}")
    times: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(args.repeats):
        for name, make in makers.items():
            times[name].append(run_metric(make, samples, classes)[0])
    med = {name: statistics.median(t) for name, t in times.items()}
    row = (f"| {num_images} | {num_classes} | {len(gt['annotations'])} | "
           f"{sum(len(s['pred_instances']['labels']) for s in samples)} | "
           f"{med['CocoMetric']:.3f} ({min(times['CocoMetric']):.3f}) | "
           f"{med['LongTailMetric']:.3f} ({min(times['LongTailMetric']):.3f}) | "
           f"{med['LongTailMetric'] / med['CocoMetric']:.3f} | "
           f"{min(times['LongTailMetric']) / min(times['CocoMetric']):.3f} |")
    steps = breakdown(ann_file, samples, classes, str(tmp / "parts"))
    return row, [f"| {num_images}x{num_classes} | {name} | {sec:.3f} |"
                 for name, sec in steps.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500x20,2000x80",
                        help="comma-separated IMAGESxCLASSES of the synthetic validation sets")
    parser.add_argument("--dets", type=int, default=50, help="detections per image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("command: python " + " ".join(sys.argv))
    MMLogger.get_instance("eval_speed", log_level=logging.ERROR)
    rows, parts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            num_images, num_classes = (int(v) for v in size.lower().split("x"))
            row, steps = bench_size(num_images, num_classes, args, Path(tmp))
            rows.append(row)
            parts += steps
    print(f"\nmAP equal in both metrics; median (min) of {args.repeats} runs, seconds\n")
    print("| images | classes | boxes | detections | CocoMetric | LongTailMetric | ratio of "
          "medians | ratio of minima |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\nOne LongTailMetric evaluation, step by step (seconds)\n")
    print("| set | step | seconds |\n|---|---|---:|")
    print("\n".join(parts))


if __name__ == "__main__":
    main()
