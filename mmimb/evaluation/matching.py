"""Per-class precision, recall and F1, and a confusion matrix with background, at IoU 0.5.

Both follow COCOeval's matching rule, so that they agree with its AP, and both come from one
matching of the boxes (:func:`match_within_class`), whichever COCOeval implementation computed
the AP (faster-coco-eval keeps no per-image matches to read):

* **Precision / recall / F1** use COCOeval's matches at IoU 0.5 and area ``all``, with at most
  ``maxDets[-1]`` detections per image and class: what pycocotools stores in ``evalImgs``
  (``tests/test_eval_backends.py`` compares the two). A detection is a true positive when it
  matched a ground-truth box at IoU >= 0.5, a false positive when it matched nothing;
  detections matched to crowd boxes are ignored, as COCOeval ignores them. At a score threshold
  ``s``, over the detections with ``score >= s``: ``P = TP / (TP + FP)``, ``R = TP / G`` (``G``
  non-crowd ground-truth boxes) and ``F1 = 2 TP / (TP + FP + G)``. The *best-F1 threshold* of a
  class is the detection score at which its F1 is largest (ties: the highest such score).
* The **confusion matrix** ``M[K + 1, K + 1]`` (rows: ground-truth class, columns: predicted
  class, index ``K`` = background) counts, per image, the detections with ``score >= s``:

  1. each detection, in decreasing score order within its (image, class), takes the unmatched
     ground-truth box *of its class* with the highest IoU >= 0.5: COCOeval's greedy rule, so
     ``M[c, c]`` is exactly the ``TP`` above;
  2. the detections left over, in decreasing score order within the image, take the unmatched
     ground-truth box *of any class* with the highest IoU >= 0.5: ``M[gt, pred]``, a confusion;
  3. ground-truth boxes still unmatched are misses, ``M[gt, K]``; detections still unmatched
     are false alarms on background, ``M[K, pred]`` (``M[K, K] = 0``).

  Hence row ``c`` sums to ``G_c`` and column ``c`` to ``TP_c + FP_c``. Crowd boxes are in no row;
  a detection that step 1 would give to a crowd box of its class is dropped, like COCOeval's
  ignored detections. Step 1 runs once, on all detections: a score threshold keeps the first
  detections of every (image, class), whose matches do not depend on the ones after them. The
  matching is vectorised over all images: IoUs are computed for every (detection, ground truth)
  pair of the same image in one numpy expression (the IoU of ``pycocotools.mask.iou``, crowd
  boxes by the detection's area), and the greedy loop runs over detection ranks (at most
  ``maxDets`` iterations), not over images.

Shape shorthand: K classes, D detections, G ground-truth boxes, P (detection, box) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: IoU threshold of precision, recall, F1 and the confusion matrix.
PR_IOU = 0.5

#: Default score threshold of precision, recall, F1 and the confusion matrix (that of mmdet's
#: ``tools/analysis_tools/confusion_matrix.py``).
DEFAULT_SCORE_THR = 0.3


@dataclass(frozen=True)
class ClassPR:
    """Per-class detection quality at one score threshold and at each class's best threshold.

    Every attribute is an array over the ``K`` classes. Undefined values are -1: recall and F1
    of a class without ground truth, precision of a class with neither ground truth nor
    detections, and the best threshold of a class whose best F1 is 0. A class with ground truth
    but no detection above the threshold has ``P = R = F1 = 0``.

    Attributes:
        num_gt: ``int64[K]`` non-crowd ground-truth boxes ``G``.
        tp: ``int64[K]`` true positives with ``score >= score_thr``.
        fp: ``int64[K]`` false positives with ``score >= score_thr``.
        precision: ``float64[K]``.
        recall: ``float64[K]``.
        f1: ``float64[K]``.
        best_f1: ``float64[K]`` the largest F1 over all thresholds.
        best_thr: ``float64[K]`` the score threshold that reaches it.
        best_precision: ``float64[K]`` precision there.
        best_recall: ``float64[K]`` recall there.
        score_thr: the threshold of ``tp``, ``fp``, ``precision``, ``recall`` and ``f1``.
    """

    num_gt: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    best_f1: np.ndarray
    best_thr: np.ndarray
    best_precision: np.ndarray
    best_recall: np.ndarray
    score_thr: float


def _ratio(num: np.ndarray, den: np.ndarray, undefined: np.ndarray) -> np.ndarray:
    """``num / den`` (0 where ``den == 0``), and -1 where ``undefined``."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    out[undefined] = -1.0
    return out


def precision_recall(det_class: np.ndarray, det_score: np.ndarray, det_tp: np.ndarray,
                     num_gt: np.ndarray, score_thr: float = DEFAULT_SCORE_THR) -> ClassPR:
    """Precision, recall and F1 per class from matched detections.

    Args:
        det_class: ``int64[D]`` class index of every (non-ignored) detection.
        det_score: ``float64[D]`` its score.
        det_tp: ``bool[D]`` whether it matched a ground-truth box (else a false positive).
        num_gt: ``int64[K]`` ground-truth boxes per class.
        score_thr: detections with ``score >= score_thr`` count at the fixed threshold.

    Returns:
        The :class:`ClassPR`.
    """
    num_gt = np.asarray(num_gt, dtype=np.int64)
    k = len(num_gt)
    det_tp = np.asarray(det_tp, dtype=bool)
    above = det_score >= score_thr
    tp = np.bincount(det_class[above & det_tp], minlength=k)
    fp = np.bincount(det_class[above & ~det_tp], minlength=k)
    no_gt = num_gt == 0
    precision = _ratio(tp, tp + fp, no_gt & (tp + fp == 0))
    recall = _ratio(tp, num_gt, no_gt)
    f1 = _ratio(2 * tp, tp + fp + num_gt, no_gt)

    best = {name: np.where(no_gt, -1.0, 0.0) for name in ("f1", "p", "r")}
    best_thr = np.full(k, -1.0)
    if len(det_class):
        # Sort by class, then decreasing score; cumulate TP and FP within each class.
        order = np.lexsort((-det_score, det_class))
        cls, score, hit = det_class[order], det_score[order], det_tp[order]
        start = np.searchsorted(cls, cls, side="left")
        ctp = np.cumsum(hit)
        cfp = np.cumsum(~hit)
        base_tp = np.where(start > 0, ctp[start - 1], 0)
        base_fp = np.where(start > 0, cfp[start - 1], 0)
        ctp, cfp = ctp - base_tp, cfp - base_fp
        # A threshold keeps whole groups of equal scores: evaluate at the end of each group.
        end = np.ones(len(cls), dtype=bool)
        end[:-1] = (cls[1:] != cls[:-1]) | (score[1:] != score[:-1])
        gt = num_gt[cls]
        f1_curve = np.divide(2.0 * ctp, ctp + cfp + gt, out=np.zeros(len(cls)), where=gt > 0)
        cand = np.flatnonzero(end & (gt > 0) & (ctp > 0))
        # Per class, the candidate with the largest F1, earliest (= highest score) on ties.
        pick = cand[np.lexsort((cand, -f1_curve[cand], cls[cand]))]
        classes, first = np.unique(cls[pick], return_index=True)
        chosen = pick[first]
        best["f1"][classes] = f1_curve[chosen]
        best["p"][classes] = ctp[chosen] / (ctp[chosen] + cfp[chosen])
        best["r"][classes] = ctp[chosen] / gt[chosen]
        best_thr[classes] = score[chosen]
    return ClassPR(num_gt, tp, fp, precision, recall, f1, best["f1"], best_thr, best["p"],
                   best["r"], float(score_thr))


def eval_columns(coco_eval: Any, cat_ids: Sequence[int]) -> list[int]:
    """Position of each of ``cat_ids`` in COCOeval's (sorted) category axis.

    ``COCOeval.evaluate`` (of either backend) sorts ``params.catIds``; the precision and recall
    arrays follow that order, not the order in which the categories were given.
    """
    position = {int(c): i for i, c in enumerate(coco_eval.params.catIds)}
    return [position[int(c)] for c in cat_ids]


@dataclass(frozen=True)
class BoxSet:
    """Boxes of many images as flat arrays.

    Attributes:
        image: ``int64[n]`` image index.
        label: ``int64[n]`` class index.
        box: ``float64[n, 4]`` ``[x, y, w, h]``.
        score: ``float64[n]`` detection score (1 for ground truth).
        crowd: ``bool[n]`` crowd box (IoU by the detection's area).
        ignore: ``bool[n]`` ignored ground truth (crowd, or area outside COCOeval's ``all``).
    """

    image: np.ndarray
    label: np.ndarray
    box: np.ndarray
    score: np.ndarray
    crowd: np.ndarray
    ignore: np.ndarray

    def __len__(self) -> int:
        return len(self.image)

    def take(self, index: np.ndarray) -> BoxSet:
        return BoxSet(self.image[index], self.label[index], self.box[index], self.score[index],
                      self.crowd[index], self.ignore[index])


def boxes_from_annotations(anns: list[dict[str, Any]], image_index: dict[Any, int],
                           label_of: dict[Any, int],
                           area_range: tuple[float, float] = (0.0, 1e10)) -> BoxSet:
    """A :class:`BoxSet` of the COCO annotations (or results) on known images and categories."""
    # One pass over the dicts: image, label, x, y, w, h, score, crowd, area.
    rows = [(image_index[a["image_id"]], label_of[a["category_id"]], *a["bbox"],
             a.get("score", 1.0), a.get("iscrowd", 0), a.get("area", a["bbox"][2] * a["bbox"][3]))
            for a in anns if a["image_id"] in image_index and a["category_id"] in label_of]
    table = np.array(rows, dtype=np.float64).reshape(-1, 9)
    crowd = table[:, 7] != 0
    area = table[:, 8]
    return BoxSet(image=table[:, 0].astype(np.int64), label=table[:, 1].astype(np.int64),
                  box=table[:, 2:6], score=table[:, 6], crowd=crowd,
                  ignore=crowd | (area < area_range[0]) | (area > area_range[1]))


def pair_iou(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired ``[x, y, w, h]`` boxes, computed as ``pycocotools.mask.iou`` does.

    Args:
        det: ``float64[P, 4]`` detections.
        gt: ``float64[P, 4]`` ground-truth boxes.
        crowd: ``bool[P]``; a crowd box's "IoU" is the intersection over the detection's area.

    Returns:
        ``float64[P]``.
    """
    w = np.minimum(det[:, 2] + det[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(det[:, 0], gt[:, 0])
    h = np.minimum(det[:, 3] + det[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(det[:, 1], gt[:, 1])
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    det_area = det[:, 2] * det[:, 3]
    union = np.where(crowd, det_area, det_area + gt[:, 2] * gt[:, 3] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def _same_image_pairs(dets: BoxSet, gts: BoxSet) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair on the same image: ``(det int64[P], gt int64[P])``."""
    order = np.argsort(gts.image, kind="stable")
    num_images = int(max(dets.image.max(initial=-1), gts.image.max(initial=-1))) + 1
    per_image = np.bincount(gts.image, minlength=num_images)
    start = np.concatenate([[0], np.cumsum(per_image)[:-1]])
    count = per_image[dets.image]
    pair_det = np.repeat(np.arange(len(dets)), count)
    first = np.cumsum(count) - count
    offset = np.arange(len(pair_det)) - np.repeat(first - start[dets.image], count)
    return pair_det, order[offset]


def _group_rank(keys: tuple[np.ndarray, ...], score: np.ndarray) -> np.ndarray:
    """Rank of every item by decreasing score within its group (ties: input order)."""
    order = np.lexsort((np.arange(len(score)), -score, *keys[::-1]))
    rank = np.empty(len(score), dtype=np.int64)
    if not len(score):
        return rank
    sorted_keys = np.stack([k[order] for k in keys], axis=1)
    new_group = np.ones(len(score), dtype=bool)
    new_group[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(score)), 0))
    rank[order] = np.arange(len(score)) - group_start
    return rank


def greedy_match(pair_det: np.ndarray, pair_gt: np.ndarray, pair_iou_: np.ndarray,
                 det_rank: np.ndarray, num_dets: int, num_gts: int) -> np.ndarray:
    """Greedy one-to-one matching, best IoU first, detections in rank order.

    The detections of one rank must compete for disjoint pools of ground truth (one rank per
    group), so that a whole rank is matched at once.

    Args:
        pair_det, pair_gt, pair_iou_: ``[P]`` candidate pairs (already above the IoU threshold).
        det_rank: ``int64[D]`` rank of each detection within its group.
        num_dets: ``D``.
        num_gts: ``G``.

    Returns:
        ``int64[D]``: the matched ground truth of every detection, or -1.
    """
    match = np.full(num_dets, -1, dtype=np.int64)
    if not len(pair_det):
        return match
    # By rank, then detection, then decreasing IoU; among equal IoUs the later box, as COCOeval.
    order = np.lexsort((-pair_gt, -pair_iou_, pair_det, det_rank[pair_det]))
    pd, pg = pair_det[order], pair_gt[order]
    rank = det_rank[pd]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(rank)) + 1, [len(rank)]])
    taken = np.zeros(num_gts, dtype=bool)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        d, g = pd[lo:hi], pg[lo:hi]
        free = ~taken[g]
        d, g = d[free], g[free]
        _, first = np.unique(d, return_index=True)
        match[d[first]] = g[first]
        taken[g[first]] = True
    return match


@dataclass(frozen=True)
class ClassMatches:
    """Step 1 of the module docstring: COCOeval's matching within each class, at one IoU.

    Attributes:
        gts: the ground-truth boxes.
        dets: the detections COCOeval considers, the ``max_dets`` highest-scoring of every
            (image, class), in input order.
        match: ``int64[D]`` the box (index into ``gts``) each detection matched, or -1.
        ignored: ``bool[D]`` unmatched detections that COCOeval ignores: on an ignored box of
            their class (crowd, or area outside the range), or themselves outside the range.
        pair_det: ``int64[P]`` detection of every same-image pair with IoU >= the threshold,
            any class.
        pair_gt: ``int64[P]`` its ground-truth box.
        pair_iou: ``float64[P]`` their IoU.
    """

    gts: BoxSet
    dets: BoxSet
    match: np.ndarray
    ignored: np.ndarray
    pair_det: np.ndarray
    pair_gt: np.ndarray
    pair_iou: np.ndarray

    def pr_inputs(self, num_classes: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The arguments of :func:`precision_recall` (without the threshold).

        Returns:
            ``(det_class int64[D'], det_score float64[D'], det_tp bool[D'], num_gt int64[K])``
            over the detections that are not ignored.
        """
        keep = ~self.ignored
        num_gt = np.bincount(self.gts.label[~self.gts.ignore], minlength=num_classes)
        return self.dets.label[keep], self.dets.score[keep], self.match[keep] >= 0, num_gt


def match_within_class(gts: BoxSet, dets: BoxSet, iou_thr: float = PR_IOU,
                       max_dets: int = 100, area_range: tuple[float, float] = (0.0, 1e10)
                       ) -> ClassMatches:
    """COCOeval's matching of the detections to the boxes of their class (step 1).

    Args:
        gts: ground-truth boxes (``ignore`` marks crowd / out-of-range boxes).
        dets: detections, in the order COCOeval received them (ties in score keep it).
        iou_thr: the IoU a match needs.
        max_dets: COCOeval's ``maxDets[-1]``: only the top detections of each (image, class).
        area_range: COCOeval's area range ``all``; an unmatched detection outside it is ignored.

    Returns:
        The :class:`ClassMatches`.
    """
    rank = _group_rank((dets.image, dets.label), dets.score)
    top = np.flatnonzero(rank < max_dets)
    dets, rank = dets.take(top), rank[top]
    pair_det, pair_gt = _same_image_pairs(dets, gts)
    iou = pair_iou(dets.box[pair_det], gts.box[pair_gt], gts.crowd[pair_gt])
    close = iou >= iou_thr
    pair_det, pair_gt, iou = pair_det[close], pair_gt[close], iou[close]
    same = dets.label[pair_det] == gts.label[pair_gt]
    on_ignored_box = gts.ignore[pair_gt]
    cand = same & ~on_ignored_box
    match = greedy_match(pair_det[cand], pair_gt[cand], iou[cand], rank, len(dets), len(gts))
    on_ignored = np.zeros(len(dets), dtype=bool)
    on_ignored[pair_det[same & on_ignored_box]] = True
    det_area = dets.box[:, 2] * dets.box[:, 3]
    outside = (det_area < area_range[0]) | (det_area > area_range[1])
    ignored = (match < 0) & (on_ignored | outside)
    return ClassMatches(gts, dets, match, ignored, pair_det, pair_gt, iou)


def confusion_matrix(matches: ClassMatches, num_classes: int,
                     score_thr: float = DEFAULT_SCORE_THR) -> np.ndarray:
    """Confusion matrix with background (rule in the module docstring).

    Args:
        matches: step 1, :func:`match_within_class` of all detections.
        num_classes: ``K``.
        score_thr: detections with ``score >= score_thr`` are counted.

    Returns:
        ``int64[K + 1, K + 1]``: rows ground truth, columns prediction, last index background.
    """
    gts, dets = matches.gts, matches.dets
    above = dets.score >= score_thr
    match = np.where(above, matches.match, -1)
    gt_taken = np.zeros(len(gts), dtype=bool)
    gt_taken[match[match >= 0]] = True

    # 2. Left-over detections against left-over boxes of any class, by score within the image.
    left = above & (match < 0) & ~matches.ignored
    pd, pg, iou = matches.pair_det, matches.pair_gt, matches.pair_iou
    cand = ~gts.ignore[pg] & left[pd] & ~gt_taken[pg]
    image_rank = _group_rank((dets.image,), np.where(left, dets.score, -np.inf))
    cross = greedy_match(pd[cand], pg[cand], iou[cand], image_rank, len(dets), len(gts))
    match = np.where(match >= 0, match, cross)
    gt_taken[cross[cross >= 0]] = True

    # 3. Fill the matrix: matches, misses (column K), false alarms (row K).
    k = num_classes
    matched = match >= 0
    false_alarm = above & ~matched & ~matches.ignored
    missed = ~gt_taken & ~gts.ignore
    rows = np.concatenate([gts.label[match[matched]], gts.label[missed],
                           np.full(np.count_nonzero(false_alarm), k)])
    cols = np.concatenate([dets.label[matched], np.full(np.count_nonzero(missed), k),
                           dets.label[false_alarm]])
    return np.bincount(rows * (k + 1) + cols, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
