"""``LongTailMetric``: COCO-style bbox AP overall, per class and per frequency group."""

from __future__ import annotations

import os.path as osp
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from mmdet.evaluation.metrics import CocoMetric
from mmdet.registry import METRICS
from mmengine.fileio import load
from mmengine.logging import MMLogger
from pycocotools.coco import COCO

from mmimb.evaluation.long_tail import (
    LongTailResult,
    evaluate_bbox,
    format_table,
    summarize_long_tail,
    write_report,
)
from mmimb.stats import (
    LVIS_COMMON_MAX,
    LVIS_RARE_MAX,
    ClassStats,
    class_stats_from_coco,
    frequency_groups,
    validate_counts,
)


@METRICS.register_module()
class LongTailMetric(CocoMetric):
    """COCO bbox AP overall, per class, and per rare/common/frequent group, for any COCO json.

    Groups come from the **training** set's per-class counts, given by ``train_ann_file`` (a
    COCO json), by explicit ``class_counts``, or (``class_counts='auto'``) by
    :class:`mmimb.hooks.ClassStatsHook`, which reads the runner's training dataset. A class is
    rare when its count is ``<= rare_max``, common when ``<= common_max``, frequent otherwise;
    the defaults are LVIS v1's, in training images.

    The metric logs a table (per-class AP next to the training count, AP of each group) and
    writes it as ``long_tail.json`` and ``long_tail.md`` to ``out_dir`` (by default the
    runner's log folder).

    Args:
        ann_file: COCO json of the evaluated split; converted from the dataset when None.
        train_ann_file: COCO json of the training split, to count classes.
        class_counts: ``[C]`` training counts, or ``'auto'``; exclusive with ``train_ann_file``.
        count_by: ``'image'`` (LVIS convention) or ``'instance'``.
        rare_max: largest training count of a rare class.
        common_max: largest training count of a common class.
        out_dir: where to write the JSON and Markdown report.
        prefix: prefix of the logged keys.
        **kwargs: passed to mmdet's ``CocoMetric`` (``outfile_prefix``, ``format_only`` ...).

    Raises:
        ValueError: on an invalid argument; at evaluation time, when no training counts came.
    """

    default_prefix = "lt"
    _coco_api: COCO | None  # set by CocoMetric
    cat_ids: list[int] | None
    img_ids: list[int] | None

    def __init__(self, ann_file: str | None = None, train_ann_file: str | None = None,
                 class_counts: Sequence[float] | str | None = None, count_by: str = "image",
                 rare_max: float = LVIS_RARE_MAX, common_max: float = LVIS_COMMON_MAX,
                 out_dir: str | None = None, prefix: str | None = None,
                 **kwargs: Any) -> None:
        if kwargs.get("metric", "bbox") not in ("bbox", ["bbox"]):
            raise ValueError(f"metric must be 'bbox', got {kwargs['metric']!r}")
        if count_by not in ("image", "instance"):
            raise ValueError(f"count_by must be 'image' or 'instance', got {count_by!r}")
        if (train_ann_file is None) == (class_counts is None):
            raise ValueError("give exactly one of train_ann_file and class_counts "
                             f"(got train_ann_file={train_ann_file!r}, "
                             f"class_counts={class_counts!r})")
        if isinstance(class_counts, str) and class_counts != "auto":
            raise ValueError(f"class_counts must be a list or 'auto', got {class_counts!r}")
        frequency_groups([], rare_max, common_max)  # validates the thresholds
        super().__init__(ann_file=ann_file, prefix=prefix, **kwargs)
        self.train_ann_file = train_ann_file
        self.count_by = count_by
        self.rare_max = rare_max
        self.common_max = common_max
        self.out_dir = out_dir
        self._class_counts = None if isinstance(class_counts, str) else class_counts
        self._train_stats: ClassStats | None = None
        self.result: LongTailResult | None = None

    def set_class_stats(self, stats: ClassStats) -> None:
        """Receive the training statistics (called by :class:`mmimb.hooks.ClassStatsHook`)."""
        self._train_stats = stats

    def _train_counts(self, classes: Sequence[str]) -> np.ndarray:
        """``[C]`` training counts in the order of ``classes``."""
        if self._class_counts is not None:
            return validate_counts(self._class_counts, len(classes), "class_counts")
        stats = self._train_stats
        if stats is None and self.train_ann_file is not None:
            stats = self._train_stats = class_stats_from_coco(load(self.train_ann_file))
        if stats is None:
            raise ValueError(
                "class_counts='auto' but no training statistics arrived: add "
                "custom_hooks=[dict(type='ClassStatsHook')] to the config, or give "
                "train_ann_file or explicit class_counts")
        counts = stats.counts(self.count_by)
        if not stats.classes:
            return validate_counts(counts, len(classes), "training class counts")
        by_name = dict(zip(stats.classes, counts, strict=True))
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise ValueError(f"classes {missing} are not in the training set's classes "
                             f"{list(stats.classes)}")
        return np.array([by_name[c] for c in classes], dtype=np.int64)

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Evaluate the gathered results once and summarise them by class and group."""
        logger = MMLogger.get_current_instance()
        gts, preds = zip(*results, strict=True)
        classes = tuple(self.dataset_meta["classes"])
        counts = self._train_counts(classes)
        groups = frequency_groups(counts, self.rare_max, self.common_max)

        with tempfile.TemporaryDirectory() as tmp:
            prefix = self.outfile_prefix or osp.join(tmp, "results")
            if self._coco_api is None:
                self._coco_api = COCO(self.gt_to_coco_json(gt_dicts=gts, outfile_prefix=prefix))
            if self.cat_ids is None:
                self.cat_ids = self._coco_api.get_cat_ids(cat_names=classes)
            if self.img_ids is None:
                self.img_ids = self._coco_api.get_img_ids()
            detections = load(self.results2json(preds, prefix)["bbox"])
        if self.format_only:
            return {}
        coco_eval = evaluate_bbox(self._coco_api, detections, self.cat_ids, self.img_ids)
        self.result = summarize_long_tail(
            coco_eval, classes, counts, groups, self.count_by,
            {"rare_max": self.rare_max, "common_max": self.common_max})
        logger.info("Long-tail evaluation\n" + format_table(self.result))
        out_dir = self.out_dir or _log_dir(logger)
        if out_dir is not None:
            path = write_report(self.result, out_dir)
            logger.info(f"long-tail report written to {path} (and .md)")
        return self.result.flat()


def _log_dir(logger: MMLogger) -> str | None:
    """The folder of the runner's log file, when there is one."""
    log_file = getattr(logger, "log_file", None)
    return osp.dirname(log_file) if log_file else None
