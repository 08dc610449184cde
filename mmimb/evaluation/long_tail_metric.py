"""``LongTailMetric``: COCO-style bbox evaluation by class and by frequency group, in one pass."""

from __future__ import annotations

import os.path as osp
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from mmdet.evaluation.metrics import CocoMetric
from mmdet.registry import METRICS
from mmengine.fileio import dump
from mmengine.logging import MMLogger
from pycocotools.coco import COCO

from mmimb.evaluation.annotations import (
    AnnotationIssues,
    TrainSource,
    category_frequency,
    check_coco,
    load_train_source,
)
from mmimb.evaluation.groups import assign_groups, check_grouping_args
from mmimb.evaluation.long_tail import (
    DEFAULT_BACKEND,
    LongTailResult,
    check_backend,
    evaluate_bbox,
    format_table,
    summarize_long_tail,
    write_report,
)
from mmimb.evaluation.matching import DEFAULT_SCORE_THR
from mmimb.stats import LVIS_COMMON_MAX, LVIS_RARE_MAX, ClassStats, validate_counts

#: What to do with ground-truth boxes of zero or negative width or height.
DEGENERATE_POLICIES: tuple[str, ...] = ("keep", "ignore", "error")


@METRICS.register_module()
class LongTailMetric(CocoMetric):
    """COCO bbox AP, AR, precision / recall / F1 and a confusion matrix, by class and by group.

    One ``COCOeval`` pass gives everything (see :mod:`mmimb.evaluation.long_tail`): AP, AP50
    and AR overall, per class and per frequency group (rare / common / frequent); per-class
    precision, recall and F1 at IoU 0.5 and ``score >= score_thr``, and at each class's best-F1
    threshold; a confusion matrix with a background row and column
    (:mod:`mmimb.evaluation.matching`). The metric logs a table and writes
    ``long_tail.json``, ``long_tail.md``, ``long_tail_classes.csv`` and
    ``long_tail_confusion.csv`` to ``out_dir`` (by default the runner's log folder). The logged
    scalars are COCO's (``lt/mAP`` ...), ``lt/F1`` and ``lt/AP_{rare,common,frequent}``.

    Groups come from the **training** set: its per-class counts are given by
    ``train_ann_file`` (a COCO json, an LVIS json or an LVIS category-info json), by explicit
    ``class_counts``, or (``class_counts='auto'``) through :meth:`set_class_stats`, which a hook
    calls with the statistics of the runner's training dataset. ``group_by`` chooses the rule
    (:mod:`mmimb.evaluation.groups`): ``'threshold'`` (``count <= rare_max`` rare,
    ``<= common_max`` common, LVIS v1's 10 / 100 images by default), ``'quantile'``, or
    ``'frequency'`` (LVIS ``frequency`` letters); ``'auto'`` takes the letters when the training
    annotation's categories have them (else those of ``ann_file``, as in LVIS val), otherwise,
    or when ``class_counts`` is an explicit list, thresholds.

    LVIS-format json is evaluated with COCO's rules, not LVIS's federated ones: every detection
    counts, also for categories an image is not verified for (LVIS ignores those, and unmatched
    detections of ``not_exhaustive_category_ids``), and at most 100 detections per image and
    class (LVIS: 300 per image). AP on LVIS is therefore lower than the ``lvis`` package's; the
    metric says so in the log and the report.

    COCOeval runs in faster-coco-eval's C++ implementation by default (``backend``);
    ``backend='pycocotools'`` runs the reference one. Both give the same report
    (:mod:`mmimb.evaluation.long_tail`). With the default, the whole evaluation of 2,000 images
    with 100k detections takes a seventh of the time of mmdet's ``CocoMetric``
    (``benchmarks/eval_speed.py``). ``backend`` is unrelated to ``backend_args`` of
    ``CocoMetric``, which says where files are read from.

    Bad input: an ``ann_file`` or ``train_ann_file`` with duplicate image ids or annotations of
    unknown categories or images raises ``ValueError`` (at construction); boxes of zero or
    negative size are counted and reported, and handled by ``degenerate_gt``; predicted labels
    outside the dataset's classes and scores that are not finite (NaN, inf) raise ``ValueError``
    naming the image; no detection at all gives AP, P, R, F1 of 0 for every class with ground
    truth (mmdet's ``CocoMetric`` returns nothing) and a warning.

    Args:
        ann_file: COCO/LVIS json of the evaluated split; converted from the dataset when None.
        train_ann_file: training annotation, to count classes (and read LVIS letters).
        class_counts: ``[C]`` training counts, or ``'auto'``; exclusive with ``train_ann_file``.
        count_by: ``'image'`` (LVIS convention) or ``'instance'``.
        group_by: ``'auto'``, ``'threshold'``, ``'quantile'`` or ``'frequency'``.
        rare_max: largest training count of a rare class (``'threshold'``).
        common_max: largest training count of a common class (``'threshold'``).
        quantiles: ``(q1, q2)`` for ``'quantile'``.
        score_thr: score threshold of precision, recall, F1 and the confusion matrix.
        degenerate_gt: ground-truth boxes with width or height ``<= 0``: ``'keep'`` (as
            pycocotools and ``CocoMetric`` do: a box of zero size can never be matched, so it is
            a miss; one of negative size has a negative area, outside COCOeval's area range,
            so it is ignored), ``'ignore'`` (marked crowd: neither a miss nor a match) or
            ``'error'``.
        out_dir: where to write the reports.
        prefix: prefix of the logged keys.
        backend: COCOeval implementation, ``'faster_coco_eval'`` or ``'pycocotools'``
            (:data:`~mmimb.evaluation.long_tail.EVAL_BACKENDS`).
        **kwargs: passed to mmdet's ``CocoMetric`` (``outfile_prefix``, ``format_only`` ...).

    Raises:
        ValueError: on an invalid argument or annotation file; at evaluation time, when no
            training counts came, no image was evaluated, a predicted label is invalid or a
            score is not finite.
    """

    default_prefix = "lt"
    _coco_api: COCO | None  # set by CocoMetric
    cat_ids: list[int] | None
    img_ids: list[int] | None

    def __init__(self, ann_file: str | None = None, train_ann_file: str | None = None,
                 class_counts: Sequence[float] | str | None = None, count_by: str = "image",
                 group_by: str = "auto", rare_max: float = LVIS_RARE_MAX,
                 common_max: float = LVIS_COMMON_MAX,
                 quantiles: Sequence[float] = (1 / 3, 2 / 3),
                 score_thr: float = DEFAULT_SCORE_THR, degenerate_gt: str = "keep",
                 out_dir: str | None = None, prefix: str | None = None,
                 backend: str = DEFAULT_BACKEND, **kwargs: Any) -> None:
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
        check_grouping_args(group_by, rare_max, common_max, quantiles)
        if not 0.0 <= score_thr <= 1.0:
            raise ValueError(f"score_thr must lie in [0, 1], got {score_thr!r}")
        if degenerate_gt not in DEGENERATE_POLICIES:
            raise ValueError(f"degenerate_gt must be one of {DEGENERATE_POLICIES}, got "
                             f"{degenerate_gt!r}")
        check_backend(backend)
        super().__init__(ann_file=ann_file, prefix=prefix, **kwargs)
        self.train_ann_file = train_ann_file
        self.count_by = count_by
        self.group_by = group_by
        self.rare_max = rare_max
        self.common_max = common_max
        self.quantiles = tuple(quantiles)
        self.score_thr = score_thr
        self.degenerate_gt = degenerate_gt
        self.out_dir = out_dir
        self.backend = backend
        self._class_counts = None if isinstance(class_counts, str) else class_counts
        #: True when the counts must come from the training dataset (``class_counts='auto'``),
        #: the flag that :class:`mmimb.hooks.ClassStatsHook` reads on losses too.
        self.counts_from_dataset = class_counts == "auto"
        self._train: TrainSource | None = None
        self._gt_issues: AnnotationIssues | None = None
        self.result: LongTailResult | None = None
        if self._coco_api is not None:
            self._gt_issues = self._check_gt(self._coco_api, ann_file)

    def set_class_stats(self, stats: ClassStats, frequency: Sequence[str] | None = None) -> None:
        """Receive the training statistics, e.g. from a hook that reads the runner's train set.

        Args:
            stats: the training set's :class:`~mmimb.stats.ClassStats`.
            frequency: LVIS frequency letters of its classes, if known.
        """
        self._train = TrainSource(stats, None if frequency is None else tuple(frequency),
                                  "dataset", True, AnnotationIssues("training dataset"))

    def check_setup(self, classes: Sequence[str], stats_hook: bool) -> None:
        """Validate the training counts against the evaluated classes, before any inference.

        Called by :class:`mmimb.hooks.SetupCheckHook` when the run starts, so that a wrong
        setting fails in seconds instead of after the last iteration and the whole evaluation.

        Args:
            classes: the evaluated dataset's classes (``dataset_meta['classes']``).
            stats_hook: whether the runner has a hook that sends the training statistics
                (:class:`mmimb.hooks.ClassStatsHook`).

        Raises:
            ValueError: if explicit ``class_counts`` do not fit ``classes``; if
                ``train_ann_file`` cannot be read or lacks a class; if ``class_counts='auto'``
                and no hook will send the statistics.
        """
        if self.counts_from_dataset:
            if not stats_hook:
                raise ValueError(
                    "class_counts='auto' waits for the training set's statistics, but the "
                    "runner has no ClassStatsHook to send them: add "
                    "custom_hooks=[dict(type='ClassStatsHook')] (mmimb's base runtime has it), "
                    "or give train_ann_file or explicit class_counts")
            return
        if self._class_counts is not None:
            try:
                validate_counts(self._class_counts, len(classes), "class_counts")
            except ValueError as err:
                raise ValueError(f"{err}: give one training count >= 0 per evaluated class, "
                                 f"in the order of {list(classes)[:10]}") from err
            return
        try:
            source = self._train_source()
            if source is not None and source.stats.classes:
                self._train_index(source, classes)
        except (OSError, ValueError) as err:
            raise ValueError(f"train_ann_file={self.train_ann_file!r}: {err}; give the "
                             "training annotation of this dataset") from err

    def _check_gt(self, coco: COCO, source: str | None) -> AnnotationIssues:
        """Validate the evaluated ground truth and apply ``degenerate_gt``.

        LVIS json has no ``iscrowd`` (LVIS has no crowd boxes), which COCOeval needs: it is
        set to 0 where missing.
        """
        issues = check_coco(coco.dataset, source or "ground truth converted from the dataset")
        if issues and self.degenerate_gt == "error":
            raise ValueError(issues.summary() + "; degenerate_gt='error' refuses them")
        changed = False
        for ann in coco.dataset.get("annotations", []):
            w, h = ann["bbox"][2:4]
            crowd = int(bool(ann.get("iscrowd", 0))
                        or (self.degenerate_gt == "ignore" and (w <= 0 or h <= 0)))
            if ann.get("iscrowd") != crowd:
                ann["iscrowd"] = crowd
                changed = True
        if changed:
            coco.createIndex()
        return issues

    def _train_source(self) -> TrainSource | None:
        if self._train is None and self.train_ann_file is not None:
            self._train = load_train_source(self.train_ann_file)
        return self._train

    def _train_counts(self, classes: Sequence[str]) -> np.ndarray:
        """``[C]`` training counts in the order of ``classes``."""
        if self._class_counts is not None:
            return validate_counts(self._class_counts, len(classes), "class_counts")
        source = self._train_source()
        if source is None:
            raise ValueError(
                "class_counts='auto' but no training statistics arrived: call "
                "set_class_stats (a hook that reads the runner's training set does), or give "
                "train_ann_file or explicit class_counts")
        counts = source.stats.counts(self.count_by)
        if not source.stats.classes:
            return validate_counts(counts, len(classes), "training class counts")
        return np.array([counts[i] for i in self._train_index(source, classes)], dtype=np.int64)

    @staticmethod
    def _train_index(source: TrainSource, classes: Sequence[str]) -> list[int]:
        position = {name: i for i, name in enumerate(source.stats.classes)}
        missing = [c for c in classes if c not in position]
        if missing:
            raise ValueError(f"classes {missing[:5]} are not in the training set's classes "
                             f"{list(source.stats.classes)[:10]}")
        return [position[c] for c in classes]

    def _frequency(self, classes: Sequence[str]) -> tuple[str, ...] | None:
        """LVIS letters of ``classes``: from the training source, else from ``ann_file``."""
        source = None if self._class_counts is not None else self._train_source()
        if source is not None and source.frequency is not None:
            return tuple(source.frequency[i] for i in self._train_index(source, classes))
        if self._coco_api is not None and self.cat_ids is not None:
            letters = category_frequency(self._coco_api.loadCats(self.cat_ids))
            if letters is not None:  # category_frequency sorts by id; map back to label order
                by_id = dict(zip(sorted(self.cat_ids), letters, strict=True))
                return tuple(by_id[c] for c in self.cat_ids)
        return None

    def _check_predictions(self, preds: Sequence[dict], classes: Sequence[str]) -> int:
        """Refuse predicted labels outside ``[0, C)`` and scores that are not finite.

        A NaN score cannot be ranked: COCOeval and the precision/recall matcher would order it
        differently (a class's AP and AR of 1.0 next to a recall of 0.75), so the image is named
        instead of a number being reported.

        Returns:
            The number of detections.
        """
        total = 0
        for pred in preds:
            labels = np.asarray(pred["labels"])
            total += labels.size
            if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
                bad = labels[(labels < 0) | (labels >= len(classes))][0]
                raise ValueError(
                    f"image {pred.get('img_id')}: predicted label {int(bad)} is outside [0, "
                    f"{len(classes)}); the dataset has {len(classes)} classes "
                    f"{list(classes)[:5]} (is the model's num_classes that of the dataset?)")
            scores = np.asarray(pred["scores"], dtype=np.float64)
            if not np.isfinite(scores).all():
                nonfinite = np.flatnonzero(~np.isfinite(scores))
                first = int(nonfinite[0])
                raise ValueError(
                    f"image {pred.get('img_id')}: {len(nonfinite)} of its {scores.size} "
                    f"detection scores are not finite (detection {first}: {scores[first]}); "
                    "LongTailMetric cannot rank them. The model produced them: a diverged "
                    "training, or an overflow in half precision?")
        return total

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """mmdet's ``process``, failing at the first batch when the ground truth is missing.

        Raises:
            ValueError: if ``ann_file`` is None and the samples carry no ``instances`` (the
                test pipeline's ``PackDetInputs.meta_keys`` must list ``'instances'`` then).
        """
        if self._coco_api is None and data_samples and "instances" not in data_samples[0]:
            raise ValueError(
                "LongTailMetric(ann_file=None) converts the ground truth from each sample's "
                "'instances', but the samples have none: add 'instances' to the test "
                "pipeline's PackDetInputs meta_keys (e.g. meta_keys=('img_id', 'img_path', "
                "'ori_shape', 'img_shape', 'scale_factor', 'instances')) or give ann_file")
        super().process(data_batch, data_samples)

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Evaluate the gathered results once and summarise them by class and group."""
        logger = MMLogger.get_current_instance()
        if not results:
            raise ValueError("LongTailMetric received no image to evaluate: the evaluation "
                             "dataloader is empty")
        gts, preds = zip(*results, strict=True)
        classes = tuple(self.dataset_meta["classes"])
        num_dets = self._check_predictions(preds, classes)
        counts = self._train_counts(classes)

        with tempfile.TemporaryDirectory() as tmp:
            prefix = self.outfile_prefix or osp.join(tmp, "results")
            if self._coco_api is None:
                self._coco_api = COCO(self.gt_to_coco_json(gt_dicts=gts, outfile_prefix=prefix))
                self._gt_issues = self._check_gt(self._coco_api, None)
            if self.cat_ids is None:
                self.cat_ids = self._coco_api.getCatIds(catNms=classes)
            if self.img_ids is None:
                self.img_ids = self._coco_api.getImgIds()
        detections = self._coco_results(preds)
        if self.outfile_prefix is not None:  # as CocoMetric (format_only needs the file)
            dump(detections, f"{self.outfile_prefix}.bbox.json")
        if self.format_only:
            return {}
        # Explicit class_counts are meant to be grouped: 'auto' then ignores LVIS letters.
        explicit = self.group_by == "auto" and self._class_counts is not None
        grouping = assign_groups(counts, self.group_by, self.rare_max, self.common_max,
                                 self.quantiles, None if explicit else self._frequency(classes))
        issues = self._issues(self._coco_api, num_dets, len(preds))
        for text in issues.values():
            logger.warning(f"LongTailMetric: {text}")
        coco_eval = evaluate_bbox(self._coco_api, detections, self.cat_ids, self.img_ids,
                                  self.backend)
        self.result = summarize_long_tail(
            coco_eval, classes, counts, grouping, self.count_by, cat_ids=self.cat_ids,
            score_thr=self.score_thr, issues=issues)
        logger.info("Long-tail evaluation\n" + format_table(self.result))
        out_dir = self.out_dir or _log_dir(logger)
        if out_dir is not None:
            path = write_report(self.result, out_dir)
            logger.info(f"long-tail report written to {path} (and .md, _classes.csv, "
                        "_confusion.csv)")
        return self.result.flat()

    def _coco_results(self, preds: Sequence[dict]) -> list[dict[str, Any]]:
        """The predictions as COCO results: the dicts of mmdet's ``results2json``, in memory.

        The same numbers (float32 boxes and scores widened to float64, ``x2 - x1`` in float64),
        without ``results2json``'s round trip through a json file, which took half the time of
        an evaluation with faster-coco-eval (2,000 images, 100k detections).
        """
        cat_ids = np.asarray(self.cat_ids)
        results = []
        for index, pred in enumerate(preds):
            image_id = pred.get("img_id", index)
            box = np.asarray(pred["bboxes"], dtype=np.float64).reshape(-1, 4)
            xywh = np.stack([box[:, 0], box[:, 1], box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]],
                            axis=1).tolist()
            scores = np.asarray(pred["scores"], dtype=np.float64).tolist()
            cats = cat_ids[np.asarray(pred["labels"], dtype=np.int64)].tolist()
            results += [{"image_id": image_id, "bbox": b, "score": s, "category_id": c}
                        for b, s, c in zip(xywh, scores, cats, strict=True)]
        return results

    def _issues(self, coco: COCO, num_dets: int, num_images: int) -> dict[str, str]:
        """Problems of this evaluation's inputs, for the log and the report."""
        issues = {}
        if self._gt_issues:
            issues["degenerate_gt_boxes"] = (f"{self._gt_issues.summary()} (degenerate_gt="
                                             f"'{self.degenerate_gt}')")
        if num_dets == 0:
            issues["empty_predictions"] = (f"no detection on any of the {num_images} images: "
                                           "AP, P, R and F1 are 0 for every class")
        images = coco.dataset["images"]
        if any("neg_category_ids" in img or "not_exhaustive_category_ids" in img
               for img in images[:1]):
            issues["lvis_federated"] = ("LVIS-format ground truth evaluated with COCO rules "
                                        "(no federated ignoring of unverified categories, 100 "
                                        "detections per image and class): AP is lower than the "
                                        "lvis package's")
        return issues


def _log_dir(logger: MMLogger) -> str | None:
    """The folder of the runner's log file, when there is one."""
    log_file = getattr(logger, "log_file", None)
    return osp.dirname(log_file) if log_file else None
