"""Fuse the detections of several models on one image: weighted boxes fusion, NMS or soft-NMS.

Shape shorthand: ``K`` members (models), ``N_k`` detections of member ``k``, ``M`` fused
detections.

Coordinates. The members' boxes are ``(x1, y1, x2, y2)`` in pixels of the original image (mmdet's
``pred_instances`` predicted with ``rescale=True``). They are divided by ``(w, h, w, h)``, the
normalised coordinates that ``ensemble_boxes`` expects, clipped to ``[0, 1]``, fused, and
multiplied back, so every fused box lies inside the image. IoU does not change when x and y are
scaled (intersections and areas scale alike), so the normalisation changes no overlap. A box
partly outside the image is clipped to it; a box with no area inside the image (entirely outside,
or of zero width or height) is dropped. Non-finite values and boxes with ``x2 < x1`` or
``y2 < y1`` raise ``ValueError``.

Classes. Boxes of different classes are never merged, and never suppress each other.

Methods:

- ``'wbf'``: weighted boxes fusion (Solovyev, Wang & Gabruseva, "Weighted boxes fusion:
  Ensembling boxes from different object detection models", Image and Vision Computing 2021),
  ``ensemble_boxes.weighted_boxes_fusion``. Per class, boxes are taken in decreasing order of
  ``w_k * s`` and join the cluster of the first fused box they overlap with ``IoU > iou_thr``.
  A fused box is the mean of its cluster's boxes weighted by ``w_k * s``; with
  ``conf_type='avg'`` its score is ``sum(w_k * s) / sum(w)`` over the cluster, ``sum(w)`` over all
  ``K`` members (while a cluster holds at most ``K`` boxes): a box that only one of ``K``
  equally weighted members found keeps ``1 / K`` of its score.
- ``'nms'``: non-maximum suppression per class, mmcv's ``nms`` (the kernel of mmdet's test
  path), over all members' boxes, each member's scores multiplied by ``w_k / max(w)``.
- ``'soft_nms'``: soft-NMS per class (Bodla et al., "Soft-NMS: Improving Object Detection With
  One Line of Code", ICCV 2017), mmcv's ``soft_nms``, with the same score weighting. The scores
  of overlapping boxes decay by ``exp(-IoU^2 / sigma)`` (``soft_nms_type='gaussian'``) or
  ``1 - IoU`` above ``iou_thr`` (``'linear'``). mmcv rather than ``ensemble_boxes.soft_nms``:
  the latter returns the undecayed scores of the boxes it keeps.

Every method drops input boxes scored below ``score_thr`` (soft-NMS also the decayed ones) and
returns the fused boxes in decreasing order of score, at most ``max_per_img`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mmdet.registry import TASK_UTILS
from mmengine.structures import InstanceData

#: The fusion methods.
FUSION_METHODS: tuple[str, ...] = ("wbf", "nms", "soft_nms")
#: How WBF scores a fused box (see ``ensemble_boxes.weighted_boxes_fusion``).
WBF_CONF_TYPES: tuple[str, ...] = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
#: The decay functions of soft-NMS.
SOFT_NMS_TYPES: tuple[str, ...] = ("gaussian", "linear")

#: One member's detections on an image: ``float[N_k, 4]`` boxes, ``float[N_k]`` scores and
#: ``int[N_k]`` labels, as numpy arrays.
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]


def check_fusion_args(method: str = "wbf", iou_thr: float = 0.55, score_thr: float = 0.0,
                      weights: Sequence[float] | None = None, conf_type: str = "avg",
                      sigma: float = 0.5, soft_nms_type: str = "gaussian",
                      max_per_img: int | None = 100) -> None:
    """Validate the arguments of :func:`fuse_detections` (see there).

    Raises:
        ValueError: naming the first invalid argument, its value and what would be valid.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"method must be one of {FUSION_METHODS}, got {method!r}")
    if not _is_real(iou_thr) or not 0.0 <= iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be a number in [0, 1], got {iou_thr!r}")
    if not _is_real(score_thr) or not 0.0 <= score_thr <= 1.0:
        raise ValueError(f"score_thr must be a number in [0, 1], got {score_thr!r}")
    if weights is not None and (
            isinstance(weights, str | bytes) or len(weights) == 0
            or not all(_is_real(w) and math.isfinite(w) and w > 0 for w in weights)):
        raise ValueError(f"weights must be None or a non-empty list of positive numbers, one "
                         f"per member, got {weights!r}")
    if conf_type not in WBF_CONF_TYPES:
        raise ValueError(f"conf_type must be one of {WBF_CONF_TYPES}, got {conf_type!r}")
    if not _is_real(sigma) or not sigma > 0:
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
    if soft_nms_type not in SOFT_NMS_TYPES:
        raise ValueError(f"soft_nms_type must be one of {SOFT_NMS_TYPES}, got {soft_nms_type!r}")
    if max_per_img is not None and (not isinstance(max_per_img, int)
                                    or isinstance(max_per_img, bool) or max_per_img < 1):
        raise ValueError(f"max_per_img must be an int >= 1 or None, got {max_per_img!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _normalise(member: int, detections: Detections, width: float, height: float,
               score_thr: float) -> Detections:
    """Member ``member``'s detections in ``[0, 1]`` coordinates, clipped, thresholded."""
    boxes, scores, labels = (np.asarray(a) for a in detections)
    n = len(scores)
    if boxes.shape != (n, 4) or labels.shape != (n,) or scores.shape != (n,):
        raise ValueError(f"member {member}: expected bboxes [N, 4], scores [N] and labels [N], "
                         f"got shapes {boxes.shape}, {scores.shape} and {labels.shape}")
    boxes = boxes.astype(np.float64)
    scores = scores.astype(np.float64)
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"member {member}: bboxes and scores must be finite")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise ValueError(f"member {member}: box {boxes[np.argmax(inverted)].tolist()} has "
                         "x2 < x1 or y2 < y1; boxes must be (x1, y1, x2, y2)")
    boxes = np.clip(boxes / np.array([width, height, width, height]), 0.0, 1.0)
    keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (scores >= score_thr))
    return boxes[keep], scores[keep], labels[keep].astype(np.int64)


def _nms(members: list[Detections], weights: np.ndarray, iou_thr: float, score_thr: float,
         method: str, sigma: float, soft_nms_type: str) -> Detections:
    """NMS or soft-NMS of every member's boxes, one class at a time (mmcv's kernels)."""
    from mmcv.ops import nms, soft_nms

    boxes = np.concatenate([m[0] for m in members]).astype(np.float32)
    scores = np.concatenate([m[1] * (w / weights.max())
                             for m, w in zip(members, weights, strict=True)]).astype(np.float32)
    labels = np.concatenate([m[2] for m in members])
    out_boxes, out_scores, out_labels = [], [], []
    # One class at a time rather than mmcv's batched_nms, whose per-class coordinate offsets
    # would cost float32 precision on normalised boxes when there are many classes.
    for label in np.unique(labels):
        mask = labels == label
        if method == "soft_nms":
            dets, _ = soft_nms(boxes[mask], scores[mask], iou_threshold=iou_thr, sigma=sigma,
                               min_score=score_thr, method=soft_nms_type)
        else:
            dets, _ = nms(boxes[mask], scores[mask], iou_threshold=iou_thr)
        out_boxes.append(dets[:, :4])
        out_scores.append(dets[:, 4])
        out_labels.append(np.full(len(dets), label, dtype=np.int64))
    return np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels)


def fuse_detections(detections: Sequence[Detections], image_size: tuple[int, int],
                    method: str = "wbf", iou_thr: float = 0.55, score_thr: float = 0.0,
                    weights: Sequence[float] | None = None, conf_type: str = "avg",
                    sigma: float = 0.5, soft_nms_type: str = "gaussian",
                    max_per_img: int | None = 100) -> Detections:
    """Fuse ``K`` members' detections on one image (see the module docstring).

    Args:
        detections: per member, ``(bboxes float[N_k, 4], scores float[N_k], labels int[N_k])``
            with boxes ``(x1, y1, x2, y2)`` in pixels; ``N_k`` may be 0.
        image_size: ``(height, width)`` of the image in pixels (mmdet's ``ori_shape``).
        method: ``'wbf'``, ``'nms'`` or ``'soft_nms'``.
        iou_thr: IoU above which boxes are merged (WBF) or suppressed / decayed (NMS), in
            ``[0, 1]``.
        score_thr: input boxes (and, for soft-NMS, decayed boxes) scored below it are dropped.
        weights: ``[K]`` positive member weights; ``None`` weighs every member 1.
        conf_type: how WBF scores a fused box, one of :data:`WBF_CONF_TYPES`.
        sigma: the Gaussian soft-NMS parameter.
        soft_nms_type: ``'gaussian'`` or ``'linear'``.
        max_per_img: keep the best this many fused boxes; ``None`` keeps all.

    Returns:
        ``(bboxes float32[M, 4], scores float32[M], labels int64[M])``, boxes in pixels inside
        the image, in decreasing order of score.

    Raises:
        ValueError: on an invalid argument (named in the message), no member, a ``weights``
            list whose length is not ``K``, a non-positive image size, or invalid detections.
    """
    check_fusion_args(method, iou_thr, score_thr, weights, conf_type, sigma, soft_nms_type,
                      max_per_img)
    if len(detections) == 0:
        raise ValueError("detections must hold the predictions of at least one member, got none")
    if weights is not None and len(weights) != len(detections):
        raise ValueError(f"weights must have one entry per member: {len(detections)} members, "
                         f"got {len(weights)} weights {list(weights)!r}")
    height, width = image_size
    if not (_is_real(height) and _is_real(width) and height > 0 and width > 0):
        raise ValueError(f"image_size must be a positive (height, width), got {image_size!r}")
    members = [_normalise(k, d, width, height, score_thr) for k, d in enumerate(detections)]
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    if sum(len(m[1]) for m in members) == 0:
        boxes, scores, labels = np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
    elif method == "wbf":
        from ensemble_boxes import weighted_boxes_fusion

        boxes, scores, labels = weighted_boxes_fusion(
            [m[0] for m in members], [m[1] for m in members], [m[2] for m in members],
            weights=w.tolist(), iou_thr=iou_thr, skip_box_thr=score_thr, conf_type=conf_type)
    else:
        boxes, scores, labels = _nms(members, w, iou_thr, score_thr, method, sigma,
                                     soft_nms_type)
    order = np.argsort(-np.asarray(scores), kind="stable")[:max_per_img]
    boxes = np.clip(np.asarray(boxes)[order], 0.0, 1.0) * np.array([width, height, width, height])
    return (boxes.astype(np.float32), np.asarray(scores)[order].astype(np.float32),
            np.asarray(labels)[order].astype(np.int64))


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


@TASK_UTILS.register_module()
class BoxFusion:
    """Fuse several detectors' predictions on an image into one prediction.

    A thin wrapper of :func:`fuse_detections` (see the module docstring for the methods, the
    coordinates and the class rule) that takes and returns mmdet's ``pred_instances``.

    Config example::

        fusion = dict(type='BoxFusion', method='wbf', iou_thr=0.55, conf_type='avg')

    Args:
        method: ``'wbf'`` (weighted boxes fusion), ``'nms'`` or ``'soft_nms'``.
        iou_thr: IoU threshold of the merge or suppression, in ``[0, 1]``.
        score_thr: minimum score of a box taken into the fusion.
        weights: one positive weight per member; ``None`` weighs them equally.
        conf_type: WBF's fused score, one of :data:`WBF_CONF_TYPES`.
        sigma: Gaussian soft-NMS parameter.
        soft_nms_type: ``'gaussian'`` or ``'linear'``.
        max_per_img: the most fused boxes kept per image (``None``: all).

    Raises:
        ValueError: on an invalid argument, naming it.
    """

    def __init__(self, method: str = "wbf", iou_thr: float = 0.55, score_thr: float = 0.0,
                 weights: Sequence[float] | None = None, conf_type: str = "avg",
                 sigma: float = 0.5, soft_nms_type: str = "gaussian",
                 max_per_img: int | None = 100) -> None:
        check_fusion_args(method, iou_thr, score_thr, weights, conf_type, sigma, soft_nms_type,
                          max_per_img)
        self.method = method
        self.iou_thr = iou_thr
        self.score_thr = score_thr
        self.weights = None if weights is None else [float(w) for w in weights]
        self.conf_type = conf_type
        self.sigma = sigma
        self.soft_nms_type = soft_nms_type
        self.max_per_img = max_per_img

    def __call__(self, predictions: Sequence[InstanceData | Mapping[str, Any]],
                 image_size: tuple[int, int]) -> InstanceData:
        """Fuse the members' predictions on one image.

        Args:
            predictions: per member, ``pred_instances`` (or a dict) with ``bboxes``
                ``[N_k, 4]`` in pixels, ``scores [N_k]`` and ``labels [N_k]``, tensors or arrays.
            image_size: ``(height, width)`` of the image (``ori_shape``).

        Returns:
            ``InstanceData`` with ``bboxes float32[M, 4]``, ``scores float32[M]`` and
            ``labels int64[M]`` tensors, on the device of the first member's boxes.

        Raises:
            ValueError: see :func:`fuse_detections`.
        """
        detections = [(_as_numpy(p["bboxes"]), _as_numpy(p["scores"]), _as_numpy(p["labels"]))
                      for p in predictions]
        boxes, scores, labels = fuse_detections(
            detections, image_size, self.method, self.iou_thr, self.score_thr, self.weights,
            self.conf_type, self.sigma, self.soft_nms_type, self.max_per_img)
        first = predictions[0]["bboxes"] if predictions else None
        device = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
        fused = InstanceData()
        fused.bboxes = torch.from_numpy(boxes).to(device)
        fused.scores = torch.from_numpy(scores).to(device)
        fused.labels = torch.from_numpy(labels).to(device)
        return fused

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(method={self.method!r}, iou_thr={self.iou_thr}, "
                f"score_thr={self.score_thr}, weights={self.weights}, "
                f"conf_type={self.conf_type!r}, max_per_img={self.max_per_img})")
