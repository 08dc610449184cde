"""Long-tail summary of one COCOeval pass: overall, per-class and per-frequency-group AP.

One ``COCOeval`` run (``evaluate`` + ``accumulate``) serves every number here: a group's AP is
the mean of the valid entries of ``eval['precision'][T, R, K_group, area=all, maxDets=100]``,
exactly what pycocotools' ``summarize`` reports when it is run on the group's categories alone.

Shape shorthand: T IoU thresholds, R recall points, K categories, A area ranges, M maxDets.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmimb.stats import GROUP_NAMES

#: Names of COCOeval's ``stats`` vector for bbox evaluation.
COCO_STAT_NAMES: tuple[str, ...] = (
    "mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l",
    "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l")


@dataclass
class LongTailResult:
    """Everything a long-tail evaluation reports.

    Attributes:
        overall: COCO summary numbers (``mAP``, ``mAP_50`` ... see :data:`COCO_STAT_NAMES`).
        classes: one row per class: ``name``, ``group``, ``train_count``, ``AP``, ``AP50``, ``AR``
            (AP values are -1 for a class without ground truth in the evaluated split).
        groups: ``{group: {'AP': ..., 'AP50': ..., 'num_classes': ...}}``; AP is -1 for an
            empty group.
        count_by: whether ``train_count`` counts ``'image'``\\ s or ``'instance'``\\ s.
        thresholds: ``{'rare_max': ..., 'common_max': ...}``.
    """

    overall: dict[str, float]
    classes: list[dict[str, Any]]
    groups: dict[str, dict[str, float]]
    count_by: str
    thresholds: dict[str, float] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """Scalars for a logger: the overall numbers and ``AP_{group}`` for each group."""
        out = dict(self.overall)
        for name, g in self.groups.items():
            out[f"AP_{name}"] = g["AP"]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall, "groups": self.groups, "classes": self.classes,
                "count_by": self.count_by, "thresholds": self.thresholds}


def _valid_mean(values: np.ndarray) -> float:
    """Mean of the entries > -1 (COCOeval marks absent ground truth with -1), else -1."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def evaluate_bbox(coco_gt: COCO, detections: list[dict[str, Any]], cat_ids: Sequence[int],
                  img_ids: Sequence[int] | None = None) -> COCOeval:
    """Run COCOeval for boxes once (evaluate, accumulate, summarize) and return it.

    Args:
        coco_gt: ground truth.
        detections: COCO result dicts (``image_id``, ``category_id``, ``bbox``, ``score``).
        cat_ids: categories to evaluate, in label order.
        img_ids: images to evaluate; all images of ``coco_gt`` by default.
    """
    coco_dt = coco_gt.loadRes(detections) if detections else COCO()
    if not detections:  # loadRes refuses an empty list; an empty result set scores 0 AP
        coco_dt.dataset = {"images": coco_gt.dataset["images"], "annotations": [],
                           "categories": coco_gt.dataset["categories"]}
        coco_dt.createIndex()
    coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
    coco_eval.params.catIds = list(cat_ids)
    coco_eval.params.imgIds = list(img_ids) if img_ids is not None else coco_gt.getImgIds()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def summarize_long_tail(coco_eval: COCOeval, class_names: Sequence[str],
                        train_counts: np.ndarray, groups: np.ndarray,
                        count_by: str = "image",
                        thresholds: dict[str, float] | None = None) -> LongTailResult:
    """Per-class and per-group numbers from an accumulated ``COCOeval``.

    Args:
        coco_eval: after ``accumulate()``; its ``params.catIds`` are in label order.
        class_names: ``[K]`` names in label order.
        train_counts: ``[K]`` training counts, used to assign groups.
        groups: ``[K]`` group index of each class (see :func:`mmimb.stats.frequency_groups`).
        count_by: what ``train_counts`` counts, for the report.
        thresholds: group thresholds, for the report.
    """
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [T, R, K], area=all, maxDets=100
    recall = coco_eval.eval["recall"][:, :, 0, -1]  # [T, K]
    rows = [{
        "name": name, "group": GROUP_NAMES[int(groups[k])], "train_count": int(train_counts[k]),
        "AP": _valid_mean(precision[:, :, k]), "AP50": _valid_mean(precision[0, :, k]),
        "AR": _valid_mean(recall[:, k]),
    } for k, name in enumerate(class_names)]
    group_rows = {}
    for g, gname in enumerate(GROUP_NAMES):
        members = np.flatnonzero(groups == g)
        group_rows[gname] = {
            "AP": _valid_mean(precision[:, :, members]),
            "AP50": _valid_mean(precision[0, :, members]),
            "num_classes": int(len(members)),
        }
    overall = {name: float(v) for name, v in zip(COCO_STAT_NAMES, coco_eval.stats, strict=True)}
    return LongTailResult(overall, rows, group_rows, count_by, dict(thresholds or {}))


def _fmt(value: float) -> str:
    return "  -  " if value < 0 else f"{value:.3f}"


def format_table(result: LongTailResult) -> str:
    """A Markdown table a user reads at a glance: per-class AP next to the training count,
    most frequent class first, followed by the AP of each frequency group."""
    count_col = f"train {result.count_by}s"
    lines = [f"| class | group | {count_col} | AP | AP50 | AR |", "|---|---|---:|---:|---:|---:|"]
    for row in sorted(result.classes, key=lambda r: -r["train_count"]):
        lines.append(f"| {row['name']} | {row['group']} | {row['train_count']} | "
                     f"{_fmt(row['AP'])} | {_fmt(row['AP50'])} | {_fmt(row['AR'])} |")
    lines += ["", "| group | classes | AP | AP50 |", "|---|---:|---:|---:|"]
    for name, g in result.groups.items():
        lines.append(f"| {name} | {g['num_classes']} | {_fmt(g['AP'])} | {_fmt(g['AP50'])} |")
    lines.append(f"| all | {len(result.classes)} | {_fmt(result.overall['mAP'])} | "
                 f"{_fmt(result.overall['mAP_50'])} |")
    if result.thresholds:
        lines += ["", f"Groups by training {result.count_by} count: rare <= "
                      f"{result.thresholds['rare_max']:g} < common <= "
                      f"{result.thresholds['common_max']:g} < frequent."]
    return "\n".join(lines)


def write_report(result: LongTailResult, out_dir: str | Path, stem: str = "long_tail") -> Path:
    """Write ``{stem}.json`` and ``{stem}.md`` into ``out_dir``; return the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result.to_dict(), indent=1))
    (out / f"{stem}.md").write_text(format_table(result) + "\n")
    return out / f"{stem}.json"


def load_result(path: str | Path) -> LongTailResult:
    """Read a report written by :func:`write_report`."""
    data = json.loads(Path(path).read_text())
    return LongTailResult(data["overall"], data["classes"], data["groups"], data["count_by"],
                          data.get("thresholds", {}))


def compare_table(results: dict[str, LongTailResult]) -> str:
    """One Markdown row per run: overall AP and the AP of each frequency group."""
    lines = ["| run | mAP | AP50 | AP rare | AP common | AP frequent |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        groups = " | ".join(_fmt(r.groups[g]["AP"]) for g in GROUP_NAMES)
        lines.append(f"| {name} | {_fmt(r.overall['mAP'])} | {_fmt(r.overall['mAP_50'])} | "
                     f"{groups} |")
    return "\n".join(lines)
