"""Evaluation time and memory: pycocotools vs faster-coco-eval, LongTailMetric vs CocoMetric.

A synthetic COCO-format validation set (``--sizes IMAGESxCLASSES``: class frequencies follow a
power law, about 7 boxes per image) gets predictions that look like a detector's: jittered
ground-truth boxes (some with a wrong class), duplicates and clutter, up to ``--dets`` per image,
random scores. On it, one run measures:

1. **COCOeval alone**, each library on its own: ``COCO.loadRes`` + ``evaluate`` + ``accumulate``
   + ``summarize`` of pycocotools (what mmdet's ``CocoMetric`` runs) and of faster-coco-eval
   (``COCOeval_faster``); the largest difference between their 12 summary numbers.
2. **The metrics**, fed the same ``process()`` inputs: mmdet's ``CocoMetric`` (defaults,
   ``classwise=False``) and ``LongTailMetric`` with each ``backend``. The time is that of
   ``metric.evaluate()``, i.e. ``compute_metrics``: results to json, COCOeval, and for
   ``LongTailMetric`` also the per-class and group summary, the matching behind precision /
   recall / F1 and the confusion matrix, and the report files (JSON, Markdown, two CSVs). The
   numbers must agree: ``CocoMetric``'s six mAP values (3 decimals) with those of both
   ``LongTailMetric`` runs, and the two ``LongTailMetric`` runs in every logged number.
3. A **breakdown** of one ``LongTailMetric`` evaluation (default backend) into its steps.

Time is this process's CPU time (``time.process_time``; every step is single-threaded), so that
other processes on a shared machine do not count. Each contender first runs once in a forked
child, which gives its numbers for the checks and its **peak memory**: the growth of the
child's resident set (``VmHWM`` after resetting it, minus ``VmRSS`` at the start; Linux) over
the whole run, set-up included (reading the ground truth, copying the detections, or building
the metric and its ``process()`` calls), which is the same for the contenders it is compared
with. Then
``--repeats`` timed runs alternate between the contenders in this process. Tables give the
median (and minimum) seconds and the speed-up over pycocotools' COCOeval or ``CocoMetric`` as the
ratio of the medians (and of the minima).

Usage::

    python benchmarks/eval_speed.py                         # 500x20 and 2000x80
    python benchmarks/eval_speed.py --sizes 5000x80 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import faster_coco_eval
import numpy as np
import torch
from mmdet.evaluation.metrics import CocoMetric
from mmengine.logging import MMLogger
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmimb.evaluation import LongTailMetric, evaluate_bbox, write_report
from mmimb.evaluation.long_tail import eval_matches, summarize_long_tail
from mmimb.evaluation.matching import confusion_matrix, precision_recall
from mmimb.stats import class_stats_from_coco

SIZE = 640

#: A run: seconds of the part that is timed, and the numbers it produced.
Runner = Callable[[], tuple[float, Any]]


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
    """CPU seconds of ``evaluate()`` of a fresh metric fed ``samples``, and its result."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
        metric = make()
        metric.dataset_meta = {"classes": classes}
        for sample in samples:
            metric.process({}, [sample])
        start = time.process_time()
        out = metric.evaluate(len(samples))
        seconds = time.process_time() - start
    return seconds, out


def run_cocoeval(coco_class: type, eval_class: type, ann_file: str, dets: list[dict]
                 ) -> tuple[float, np.ndarray]:
    """CPU seconds of one library's loadRes + evaluate + accumulate + summarize, and its stats."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_class(ann_file)
        results = copy.deepcopy(dets)  # loadRes changes them
        start = time.process_time()
        coco_eval = eval_class(coco_gt, coco_gt.loadRes(results), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        seconds = time.process_time() - start
    return seconds, np.asarray(coco_eval.stats[:12])


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def in_child(runner: Runner) -> tuple[float, Any]:
    """Peak resident-memory growth (MiB) of ``runner`` in a forked child, and its numbers."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        start = _status_kib("VmRSS")
        out = runner()[1]
        send.send(((_status_kib("VmHWM") - start) / 1024, out))

    proc = ctx.Process(target=child)
    proc.start()
    result = receive.recv()
    proc.join()
    return result


def measure(runners: dict[str, Runner], repeats: int
            ) -> tuple[dict[str, list[float]], dict[str, float], dict[str, Any]]:
    """Seconds of ``repeats`` alternating runs, peak memory (MiB) and numbers of each runner."""
    memory, numbers = {}, {}
    for name, runner in runners.items():
        memory[name], numbers[name] = in_child(runner)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            times[name].append(runner()[0])
    return times, memory, numbers


def breakdown(ann_file: str, samples: list[dict], classes: tuple[str, ...],
              out_dir: str) -> dict[str, float]:
    """CPU seconds of COCOeval and of each extra step of LongTailMetric, on one evaluation."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
    cat_ids = coco.getCatIds()
    dets = detections(samples, cat_ids)
    out: dict[str, float] = {}
    start = time.process_time()
    coco_eval = evaluate_bbox(coco, dets, cat_ids)
    out["COCOeval, faster-coco-eval (boxes to COCO, evaluate, accumulate, summarize)"] = (
        time.process_time() - start)
    start = time.process_time()
    matches = eval_matches(coco_eval, cat_ids)
    out["matching at IoU 0.5 (for P / R / F1 and confusion)"] = time.process_time() - start
    start = time.process_time()
    precision_recall(*matches.pr_inputs(len(cat_ids)))
    out["P / R / F1"] = time.process_time() - start
    start = time.process_time()
    confusion_matrix(matches, len(cat_ids), 0.3)
    out["confusion matrix"] = time.process_time() - start
    result = summarize_long_tail(coco_eval, classes, np.arange(len(classes)),
                                 np.zeros(len(classes), int))
    start = time.process_time()
    write_report(result, out_dir)
    out["report files"] = time.process_time() - start
    return out


def detections(samples: list[dict], cat_ids: list[int]) -> list[dict]:
    """The predictions of ``samples`` as COCO results (what ``results2json`` writes)."""
    return [{"image_id": s["img_id"], "category_id": cat_ids[int(label)], "score": float(score),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for s in samples for b, score, label in zip(
                s["pred_instances"]["bboxes"].numpy(), s["pred_instances"]["scores"].numpy(),
                s["pred_instances"]["labels"].numpy(), strict=True)]


def _cell(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} ({min(times):.3f})"


def _speedup(base: list[float], times: list[float]) -> str:
    return (f"{statistics.median(base) / statistics.median(times):.2f}x "
            f"({min(base) / min(times):.2f}x)")


def bench_size(num_images: int, num_classes: int, args: argparse.Namespace,
               tmp: Path) -> dict[str, list[str]]:
    """The table rows of one synthetic set: COCOeval, metrics, breakdown."""
    rng = np.random.default_rng(args.seed)
    gt = synthetic_gt(num_images, num_classes, rng)
    ann_file = str(tmp / f"gt_{num_images}x{num_classes}.json")
    Path(ann_file).write_text(json.dumps(gt))
    samples = synthetic_samples(gt, args.dets, rng)
    classes = tuple(c["name"] for c in gt["categories"])
    counts = class_stats_from_coco(gt).image_counts.tolist()
    dets = detections(samples, [c["id"] for c in gt["categories"]])
    label = f"{num_images} x {num_classes}"
    size = f"| {label} | {len(gt['annotations'])} | {len(dets)} |"
    rows: dict[str, list[str]] = {}

    libraries: dict[str, Runner] = {
        "pycocotools": partial(run_cocoeval, COCO, COCOeval, ann_file, dets),
        "faster-coco-eval": partial(run_cocoeval, faster_coco_eval.COCO,
                                    faster_coco_eval.COCOeval_faster, ann_file, dets),
    }
    times, memory, stats = measure(libraries, args.repeats)
    diff = float(np.abs(stats["pycocotools"] - stats["faster-coco-eval"]).max())
    rows["cocoeval"] = [
        f"{size} {_cell(times['pycocotools'])} | {_cell(times['faster-coco-eval'])} | "
        f"{_speedup(times['pycocotools'], times['faster-coco-eval'])} | {diff:.1e} | "
        f"{memory['pycocotools']:.0f} | {memory['faster-coco-eval']:.0f} |"]

    lt = partial(LongTailMetric, ann_file=ann_file, class_counts=counts,
                 out_dir=str(tmp / "report"))
    metrics: dict[str, Runner] = {
        "CocoMetric": partial(run_metric, partial(CocoMetric, ann_file=ann_file), samples,
                              classes),
        "LongTailMetric, pycocotools": partial(run_metric, partial(lt, backend="pycocotools"),
                                               samples, classes),
        "LongTailMetric, faster_coco_eval": partial(
            run_metric, partial(lt, backend="faster_coco_eval"), samples, classes),
    }
    times, memory, out = measure(metrics, args.repeats)
    ref, fast = out["LongTailMetric, pycocotools"], out["LongTailMetric, faster_coco_eval"]
    backend_diff = max(abs(ref[k] - fast[k]) for k in ref) if ref.keys() == fast.keys() else 1.0
    coco_keys = {"mAP": "coco/bbox_mAP", "mAP_50": "coco/bbox_mAP_50",
                 "mAP_75": "coco/bbox_mAP_75", "mAP_s": "coco/bbox_mAP_s",
                 "mAP_m": "coco/bbox_mAP_m", "mAP_l": "coco/bbox_mAP_l"}
    coco_equal = all(round(lt_out[f"lt/{k}"], 3) == out["CocoMetric"][v]
                     for lt_out in (ref, fast) for k, v in coco_keys.items())
    if backend_diff > 1e-12 or not coco_equal:
        raise RuntimeError(f"the metrics disagree: {out}")
    rows["metrics"] = [
        f"| {label} | {name} | {_cell(t)} | {_speedup(times['CocoMetric'], t)} | "
        f"{out[name].get('coco/bbox_mAP', out[name].get('lt/mAP')):.3f} | {memory[name]:.0f} |"
        for name, t in times.items()]
    rows["checks"] = [f"{label}: CocoMetric's six mAP numbers (3 decimals) equal both "
                      "LongTailMetrics'; the two LongTailMetrics differ by at most "
                      f"{backend_diff:.1e} over their {len(ref)} logged numbers."]
    steps = breakdown(ann_file, samples, classes, str(tmp / "parts"))
    rows["steps"] = [f"| {label} | {name} | {sec:.3f} |" for name, sec in steps.items()]
    return rows


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
    rows: dict[str, list[str]] = {"cocoeval": [], "metrics": [], "checks": [], "steps": []}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            num_images, num_classes = (int(v) for v in size.lower().split("x"))
            for key, lines in bench_size(num_images, num_classes, args, Path(tmp)).items():
                rows[key] += lines
    print(f"\nCPU seconds, median (min) of {args.repeats} runs; speed-up = ratio of medians "
          "(of minima); peak = resident-memory growth, MiB\n")
    print("COCOeval alone (loadRes, evaluate, accumulate, summarize)\n")
    print("| images x classes | boxes | detections | pycocotools | faster-coco-eval | speed-up "
          "| max stats difference | peak pycocotools | peak faster-coco-eval |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows["cocoeval"]))
    print("\nMetrics, evaluate() on the same predictions\n")
    print("| images x classes | metric | seconds | speed-up over CocoMetric | mAP | peak |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows["metrics"]))
    print("\n" + "\n".join(rows["checks"]))
    print("\nOne LongTailMetric evaluation (default backend), step by step (CPU seconds)\n")
    print("| images x classes | step | seconds |\n|---|---|---:|")
    print("\n".join(rows["steps"]))


if __name__ == "__main__":
    main()
