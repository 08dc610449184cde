"""Long-tail summary of one COCOeval pass: overall, per-class and per-frequency-group numbers.

One ``COCOeval`` run (``evaluate`` + ``accumulate``) serves every number here:

- a class's or group's AP is the mean of the valid entries of
  ``eval['precision'][T, R, K_group, area=all, maxDets=100]``, and its AR the mean of
  ``eval['recall'][T, K_group, area=all, maxDets=100]``: exactly what pycocotools' ``summarize``
  reports (``AP``, ``AR@100``) when it is run on the group's categories alone;
- precision, recall and F1 come from COCOeval's matching rule at IoU 0.5 applied to the same
  detections and boxes, and the confusion matrix from the same matches
  (:mod:`mmimb.evaluation.matching`).

Two implementations of COCOeval can run it (``backend``, :data:`EVAL_BACKENDS`):
faster-coco-eval (the default; ``evaluate`` and ``accumulate`` in C++, 9x faster than
pycocotools on 2,000 images with 100k detections, ``benchmarks/eval_speed.py``) and
pycocotools. They give the same report: equal stats, per-class and group AP and AR (the C++
``accumulate`` sums in another order, so precision entries may differ in the last bit, about
1e-16), and the same P / R / F1 and confusion matrix, which do not depend on the backend
(``tests/test_eval_backends.py``).

Shape shorthand: T IoU thresholds, R recall points, K categories, A area ranges, M maxDets.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import faster_coco_eval
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmimb.evaluation.annotations import MAX_EXAMPLES
from mmimb.evaluation.groups import Grouping, describe_grouping
from mmimb.evaluation.matching import (
    DEFAULT_SCORE_THR,
    PR_IOU,
    ClassMatches,
    boxes_from_annotations,
    confusion_matrix,
    eval_columns,
    match_within_class,
    precision_recall,
)
from mmimb.stats import GROUP_NAMES

#: COCOeval implementations by name: ``(COCO class, COCOeval class)``.
EVAL_BACKENDS: dict[str, tuple[type, type]] = {
    "faster_coco_eval": (faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster),
    "pycocotools": (COCO, COCOeval),
}

#: The backend used unless another is asked for.
DEFAULT_BACKEND = "faster_coco_eval"

#: An evaluated COCOeval of either backend (neither library has type information).
AnyCOCOeval: TypeAlias = COCOeval | faster_coco_eval.COCOeval_faster

#: Names of COCOeval's ``stats`` vector for bbox evaluation.
COCO_STAT_NAMES: tuple[str, ...] = (
    "mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l",
    "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l")

#: Columns of the per-class rows, in the order of the CSV file.
CLASS_COLUMNS: tuple[str, ...] = (
    "name", "group", "train_count", "num_gt", "AP", "AP50", "AR", "TP", "FP", "P", "R", "F1",
    "best_F1", "best_thr", "best_P", "best_R")

#: Label of the background row and column of the confusion matrix.
BACKGROUND = "background"


@dataclass
class LongTailResult:
    """Everything a long-tail evaluation reports.

    Undefined numbers are -1: AP, AR, recall and F1 of a class without ground truth in the
    evaluated split, the AP of an empty group, a best threshold that does not exist.

    Attributes:
        overall: COCO summary numbers (``mAP``, ``mAP_50`` ... see :data:`COCO_STAT_NAMES`) and
            ``F1``, the mean F1 at ``score_thr`` over the classes with ground truth.
        classes: one row per class with the keys of :data:`CLASS_COLUMNS`: training count,
            ground-truth boxes, ``AP``, ``AP50``, ``AR`` (IoU 0.5:0.95, 100 detections per
            image); ``TP``, ``FP``, ``P``, ``R``, ``F1`` at IoU 0.5 and ``score >= score_thr``;
            ``best_F1`` and the threshold ``best_thr`` that reaches it, with ``best_P``,
            ``best_R`` there.
        groups: ``{group: {'AP', 'AP50', 'AR', 'F1', 'num_classes'}}``; ``F1`` is the mean over
            the group's classes with ground truth.
        count_by: whether ``train_count`` counts ``'image'``\\ s or ``'instance'``\\ s.
        thresholds: ``{'rare_max': ..., 'common_max': ...}`` of the grouping (empty when the
            groups come from LVIS ``frequency`` letters).
        grouping: ``'threshold'``, ``'quantile'`` or ``'frequency'``.
        score_thr: score threshold of ``TP``, ``FP``, ``P``, ``R``, ``F1`` and ``confusion``.
        confusion: ``int64[K + 1, K + 1]`` confusion matrix, rows ground truth, columns
            prediction, last index background (rule in :mod:`mmimb.evaluation.matching`).
        issues: problems found in the inputs (boxes of zero size, empty predictions ...).
    """

    overall: dict[str, float]
    classes: list[dict[str, Any]]
    groups: dict[str, dict[str, float]]
    count_by: str
    thresholds: dict[str, float] = field(default_factory=dict)
    grouping: str = "threshold"
    score_thr: float = DEFAULT_SCORE_THR
    confusion: np.ndarray | None = None
    issues: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """Scalars for a logger: the overall numbers and ``AP_{group}`` for each group."""
        out = dict(self.overall)
        for name, g in self.groups.items():
            out[f"AP_{name}"] = g["AP"]
        return out

    def to_dict(self) -> dict[str, Any]:
        """A json-serialisable dict; the confusion matrix as ``[gt, pred, count]`` triples."""
        confusion = None
        if self.confusion is not None:
            rows, cols = np.nonzero(self.confusion)
            confusion = {
                "labels": [r["name"] for r in self.classes] + [BACKGROUND],
                "entries": [[int(r), int(c), int(self.confusion[r, c])]
                            for r, c in zip(rows, cols, strict=True)]}
        return {"overall": self.overall, "groups": self.groups, "classes": self.classes,
                "count_by": self.count_by, "thresholds": self.thresholds,
                "grouping": self.grouping, "score_thr": self.score_thr, "iou_pr": PR_IOU,
                "confusion": confusion, "issues": self.issues}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LongTailResult:
        """Inverse of :meth:`to_dict` (also reads reports of the first version)."""
        confusion = None
        if data.get("confusion"):
            size = len(data["confusion"]["labels"])
            confusion = np.zeros((size, size), dtype=np.int64)
            for r, c, n in data["confusion"]["entries"]:
                confusion[r, c] = n
        return cls(data["overall"], data["classes"], data["groups"], data["count_by"],
                   data.get("thresholds", {}), data.get("grouping", "threshold"),
                   data.get("score_thr", DEFAULT_SCORE_THR), confusion, data.get("issues", {}))


def _valid_mean(values: np.ndarray) -> float:
    """Mean of the entries > -1 (COCOeval marks absent ground truth with -1), else -1."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def check_detections(coco_gt: Any, detections: list[dict[str, Any]],
                     cat_ids: Sequence[int]) -> None:
    """Refuse detections on unknown images or of unknown categories.

    COCOeval would silently skip both (pycocotools' ``loadRes`` fails on unknown images with a
    bare ``AssertionError``).

    Raises:
        ValueError: naming the offending ids and the valid ones.
    """
    cats = {d["category_id"] for d in detections}
    unknown = sorted(cats - {int(c) for c in cat_ids}, key=str)
    if unknown:
        raise ValueError(
            f"detections have category_id(s) {unknown[:MAX_EXAMPLES]} that are not among the "
            f"{len(cat_ids)} evaluated categories (ids {sorted(cat_ids)[:MAX_EXAMPLES]} ...)")
    images = {d["image_id"] for d in detections}
    missing = sorted(images - set(coco_gt.getImgIds()), key=str)
    if missing:
        raise ValueError(f"detections name image_id(s) {missing[:MAX_EXAMPLES]} that are not in "
                         "the ground truth")


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` unless ``backend`` is a key of :data:`EVAL_BACKENDS`."""
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"backend must be one of {tuple(EVAL_BACKENDS)}, got {backend!r}")


def _indexed(coco_class: type, dataset: dict[str, Any]) -> Any:
    """A COCO object of ``coco_class`` on ``dataset`` (shared, not copied)."""
    coco = coco_class()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
        coco.createIndex()
    return coco


def _renumber_images(gt: dict[str, Any], results: list[dict[str, Any]],
                     img_ids: Sequence[Any]) -> tuple[dict[str, Any], list[int]]:
    """Number the images 1, 2 ... in the order of their ids, on copies; ``results`` are changed.

    faster-coco-eval's C++ core takes integer image ids only (its ``createIndex`` converts others
    with ``int()``, in place); mmdet's ``VOCDataset`` names images by strings. The order is
    kept because COCOeval sorts the images by id, and that order breaks ties in score between
    images when it accumulates.

    Returns:
        The renumbered ground truth and ``img_ids``.
    """
    position = {img_id: i for i, img_id in
                enumerate(sorted(img["id"] for img in gt["images"]), start=1)}
    for res in results:
        res["image_id"] = position[res["image_id"]]
    data = dict(gt, images=[dict(img, id=position[img["id"]]) for img in gt["images"]],
                annotations=[dict(a, image_id=position[a["image_id"]])
                             for a in gt.get("annotations", [])])
    return data, [position[i] for i in img_ids]


def evaluate_bbox(coco_gt: Any, detections: list[dict[str, Any]], cat_ids: Sequence[int],
                  img_ids: Sequence[Any] | None = None,
                  backend: str = DEFAULT_BACKEND) -> AnyCOCOeval:
    """Run COCOeval for boxes once (evaluate, accumulate, summarize) and return it.

    An empty ``detections`` list is valid: every class with ground truth gets AP 0. The
    detections are read as pycocotools' ``loadRes`` reads boxes (``area = w * h``, ids from 1,
    not crowd), into copies: the dicts passed in are not changed. Image ids that are not
    integers (mmdet's ``VOCDataset`` uses file names) are replaced by their rank, on copies, in
    the COCOeval returned.

    Args:
        coco_gt: ground truth, a ``COCO`` of pycocotools (as mmdet's) or of faster-coco-eval;
            the other backend gets an index of its own on the same dicts.
        detections: COCO result dicts (``image_id``, ``category_id``, ``bbox``, ``score``).
        cat_ids: categories to evaluate, in label order.
        img_ids: images to evaluate; all images of ``coco_gt`` by default.
        backend: a key of :data:`EVAL_BACKENDS`.

    Raises:
        ValueError: if ``backend`` is unknown or a detection names an unknown image or
            category (see :func:`check_detections`).
    """
    check_backend(backend)
    check_detections(coco_gt, detections, cat_ids)
    coco_class, eval_class = EVAL_BACKENDS[backend]
    gt = coco_gt.dataset
    img_ids = list(img_ids) if img_ids is not None else coco_gt.getImgIds()
    results = [dict(d, area=d["bbox"][2] * d["bbox"][3], id=i, iscrowd=0)
               for i, d in enumerate(detections, start=1)]
    if any(type(img["id"]) is not int for img in gt["images"]) or any(
            type(a["image_id"]) is not int for a in gt.get("annotations", [])):
        gt, img_ids = _renumber_images(gt, results, img_ids)
    if gt is not coco_gt.dataset or not isinstance(coco_gt, coco_class):
        coco_gt = _indexed(coco_class, gt)
    coco_dt = _indexed(coco_class, {"images": gt["images"], "annotations": results,
                                    "categories": gt["categories"]})
    coco_eval = eval_class(coco_gt, coco_dt, "bbox")
    coco_eval.params.catIds = list(cat_ids)
    coco_eval.params.imgIds = img_ids
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def eval_matches(coco_eval: AnyCOCOeval, cat_ids: Sequence[int]) -> ClassMatches:
    """COCOeval's matching at IoU 0.5, area ``all``, of the boxes an evaluated COCOeval holds.

    Computed from the boxes, not read from ``evalImgs``, which only pycocotools keeps.
    """
    p = coco_eval.params
    image_index = {int(img_id): i for i, img_id in enumerate(p.imgIds)}
    label_of = {int(c): k for k, c in enumerate(cat_ids)}
    area_range = tuple(p.areaRng[list(p.areaRngLbl).index("all")])
    gts = boxes_from_annotations(coco_eval.cocoGt.dataset.get("annotations", []), image_index,
                                 label_of, area_range)
    dets = boxes_from_annotations(coco_eval.cocoDt.dataset.get("annotations", []), image_index,
                                  label_of, area_range)
    return match_within_class(gts, dets, PR_IOU, p.maxDets[-1], area_range)


def summarize_long_tail(coco_eval: AnyCOCOeval, class_names: Sequence[str],
                        train_counts: np.ndarray, groups: np.ndarray | Grouping,
                        count_by: str = "image", thresholds: dict[str, float] | None = None, *,
                        cat_ids: Sequence[int] | None = None,
                        score_thr: float = DEFAULT_SCORE_THR,
                        issues: dict[str, Any] | None = None) -> LongTailResult:
    """Per-class and per-group numbers from an evaluated and accumulated ``COCOeval``.

    Args:
        coco_eval: after ``accumulate()``.
        class_names: ``[K]`` names in label order.
        train_counts: ``[K]`` training counts.
        groups: ``[K]`` group index of each class (see :func:`mmimb.stats.frequency_groups`), or
            a :class:`~mmimb.evaluation.groups.Grouping` (which also gives the thresholds).
        count_by: what ``train_counts`` counts, for the report.
        thresholds: group thresholds, for the report (ignored when ``groups`` is a Grouping).
        cat_ids: ``[K]`` category ids in label order; by default COCOeval's (sorted) ids.
        score_thr: score threshold of precision, recall, F1 and the confusion matrix.
        issues: problems of the inputs, copied into the report.

    Returns:
        The :class:`LongTailResult`.
    """
    if isinstance(groups, Grouping):
        grouping, thresholds, groups = groups.rule, groups.thresholds, groups.groups
    else:
        grouping = "threshold"
    ids = list(coco_eval.params.catIds) if cat_ids is None else [int(c) for c in cat_ids]
    if len(ids) != len(class_names):
        raise ValueError(f"got {len(class_names)} class names for {len(ids)} categories")
    cols = eval_columns(coco_eval, ids)
    precision = coco_eval.eval["precision"][:, :, cols, 0, -1]  # [T, R, K], area=all, 100 dets
    recall = coco_eval.eval["recall"][:, cols, 0, -1]  # [T, K]
    matches = eval_matches(coco_eval, ids)
    pr = precision_recall(*matches.pr_inputs(len(ids)), score_thr=score_thr)
    rows = []
    for k, name in enumerate(class_names):
        rows.append({
            "name": name, "group": GROUP_NAMES[int(groups[k])],
            "train_count": int(train_counts[k]), "num_gt": int(pr.num_gt[k]),
            "AP": _valid_mean(precision[:, :, k]), "AP50": _valid_mean(precision[0, :, k]),
            "AR": _valid_mean(recall[:, k]), "TP": int(pr.tp[k]), "FP": int(pr.fp[k]),
            "P": float(pr.precision[k]), "R": float(pr.recall[k]), "F1": float(pr.f1[k]),
            "best_F1": float(pr.best_f1[k]), "best_thr": float(pr.best_thr[k]),
            "best_P": float(pr.best_precision[k]), "best_R": float(pr.best_recall[k]),
        })
    group_rows = {}
    for g, gname in enumerate(GROUP_NAMES):
        members = np.flatnonzero(np.asarray(groups) == g)
        group_rows[gname] = {
            "AP": _valid_mean(precision[:, :, members]),
            "AP50": _valid_mean(precision[0, :, members]),
            "AR": _valid_mean(recall[:, members]),
            "F1": _valid_mean(pr.f1[members]),
            "num_classes": int(len(members)),
        }
    overall = {name: float(v) for name, v in zip(COCO_STAT_NAMES, coco_eval.stats, strict=True)}
    overall["F1"] = _valid_mean(pr.f1)
    return LongTailResult(overall, rows, group_rows, count_by, dict(thresholds or {}), grouping,
                          float(score_thr), confusion_matrix(matches, len(ids), score_thr),
                          dict(issues or {}))


def _fmt(value: float) -> str:
    return "  -  " if value < 0 else f"{value:.3f}"


def top_confusions(result: LongTailResult, n: int = 5) -> list[tuple[str, str, int]]:
    """The ``n`` largest off-diagonal entries of the confusion matrix: (truth, predicted, count).

    Background columns and rows (misses, false alarms) are included.
    """
    if result.confusion is None:
        return []
    names = [r["name"] for r in result.classes] + [BACKGROUND]
    off = result.confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:n]
    rows, cols = np.unravel_index(flat, off.shape)
    return [(names[r], names[c], int(off[r, c])) for r, c in zip(rows, cols, strict=True)
            if off[r, c] > 0]


def format_table(result: LongTailResult) -> str:
    """A Markdown report a user reads at a glance.

    Per-class AP, AR, precision / recall / F1 next to the training count, most frequent class
    first; then each frequency group; then the largest confusions.
    """
    count_col = f"train {result.count_by}s"
    thr = f"{result.score_thr:g}"
    lines = [f"| class | group | {count_col} | GT | AP | AP50 | AR | P@{thr} | R@{thr} | "
             f"F1@{thr} | best F1 (thr) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in sorted(result.classes, key=lambda r: -r["train_count"]):
        best = _fmt(row.get("best_F1", -1))
        if row.get("best_thr", -1) >= 0:
            best += f" ({row['best_thr']:.2f})"
        lines.append(
            f"| {row['name']} | {row['group']} | {row['train_count']} | {row.get('num_gt', '')} "
            f"| {_fmt(row['AP'])} | {_fmt(row['AP50'])} | {_fmt(row['AR'])} | "
            f"{_fmt(row.get('P', -1))} | {_fmt(row.get('R', -1))} | {_fmt(row.get('F1', -1))} "
            f"| {best} |")
    lines += ["", f"| group | classes | AP | AP50 | AR | F1@{thr} |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, g in result.groups.items():
        lines.append(f"| {name} | {g['num_classes']} | {_fmt(g['AP'])} | {_fmt(g['AP50'])} | "
                     f"{_fmt(g.get('AR', -1))} | {_fmt(g.get('F1', -1))} |")
    lines.append(f"| all | {len(result.classes)} | {_fmt(result.overall['mAP'])} | "
                 f"{_fmt(result.overall['mAP_50'])} | {_fmt(result.overall.get('AR_100', -1))} "
                 f"| {_fmt(result.overall.get('F1', -1))} |")
    note = describe_grouping(result.grouping, result.thresholds, result.count_by)
    lines += ["", note] if note else []
    if result.confusion is not None:
        lines += ["", f"P, R, F1 and the confusion matrix at IoU {PR_IOU} and score >= {thr}."]
        worst = top_confusions(result)
        if worst:
            lines.append("Largest confusions (truth -> predicted: boxes): " + "; ".join(
                f"{t} -> {p}: {n}" for t, p, n in worst) + ".")
    for key, value in result.issues.items():
        lines.append(f"Input issue, {key}: {value}")
    return "\n".join(lines)


def write_report(result: LongTailResult, out_dir: str | Path, stem: str = "long_tail") -> Path:
    """Write ``{stem}.json``, ``{stem}.md``, ``{stem}_classes.csv`` and ``{stem}_confusion.csv``.

    Returns:
        The path of the JSON file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result.to_dict(), indent=1))
    (out / f"{stem}.md").write_text(format_table(result) + "\n")
    with open(out / f"{stem}_classes.csv", "w", newline="") as f:
        rows = csv.DictWriter(f, fieldnames=CLASS_COLUMNS, extrasaction="ignore")
        rows.writeheader()
        rows.writerows(result.classes)
    if result.confusion is not None:
        names = [r["name"] for r in result.classes] + [BACKGROUND]
        with open(out / f"{stem}_confusion.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["truth \\ predicted", *names])
            for name, row in zip(names, result.confusion.tolist(), strict=True):
                writer.writerow([name, *row])
    return out / f"{stem}.json"


#: What tables and plots read of a report: top-level keys and their types, then the keys of
#: ``overall``, of each group and of each class row.
_REPORT_KEYS: dict[str, type] = {"overall": dict, "groups": dict, "classes": list,
                                 "count_by": str}
_OVERALL_KEYS: tuple[str, ...] = ("mAP", "mAP_50")
_GROUP_KEYS: tuple[str, ...] = ("AP", "AP50", "num_classes")
_CLASS_KEYS: tuple[str, ...] = ("name", "group", "train_count", "AP", "AP50", "AR")


def load_result(path: str | Path) -> LongTailResult:
    """Read a report written by :func:`write_report` (a ``LongTailMetric``'s
    ``long_tail.json``), checking the elements that tables and plots read.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file and the missing or mistyped element, if it is not JSON or
            not such a report (another json, a report of other keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report {str(path)!r} does not exist")
    what = f"{path} is not a LongTailMetric report (the long_tail.json it writes)"
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: it holds a {type(data).__name__}, not an object")
    for key, kind in _REPORT_KEYS.items():
        if not isinstance(data.get(key), kind):
            found = "no key" if key not in data else f"a {type(data[key]).__name__} as"
            raise ValueError(f"{what}: {found} {key!r} (a {kind.__name__} expected; its keys: "
                             f"{sorted(data)[:8]})")
    groups = {name: data["groups"].get(name) for name in GROUP_NAMES}
    parts = [("overall", data["overall"], _OVERALL_KEYS),
             *((f"groups[{name!r}]", g, _GROUP_KEYS) for name, g in groups.items()),
             *((f"classes[{i}]", row, _CLASS_KEYS) for i, row in enumerate(data["classes"]))]
    for where, part, keys in parts:
        if not isinstance(part, dict):
            raise ValueError(f"{what}: {where} is {'missing' if part is None else part!r}, "
                             f"not an object with {list(keys)}")
        missing = [k for k in keys if k not in part]
        if missing:
            raise ValueError(f"{what}: {where} has no {missing}")
    bad = sorted({row["group"] for row in data["classes"]} - set(GROUP_NAMES))
    if bad:
        raise ValueError(f"{what}: class groups {bad}; groups are {list(GROUP_NAMES)}")
    return LongTailResult.from_dict(data)


def compare_table(results: dict[str, LongTailResult]) -> str:
    """One Markdown row per run: overall AP, the AP of each frequency group and mean F1."""
    lines = ["| run | mAP | AP50 | AP rare | AP common | AP frequent | F1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        groups = " | ".join(_fmt(r.groups[g]["AP"]) for g in GROUP_NAMES)
        lines.append(f"| {name} | {_fmt(r.overall['mAP'])} | {_fmt(r.overall['mAP_50'])} | "
                     f"{groups} | {_fmt(r.overall.get('F1', -1))} |")
    return "\n".join(lines)
