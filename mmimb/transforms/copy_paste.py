"""Rare-class copy-paste: paste object crops of the classes that training statistics choose.

:class:`RareClassCopyPaste` is a single-image transform of a normal mmdet training pipeline
(no ``MultiImageMixDataset``), placed after ``LoadAnnotations`` and before ``PackDetInputs``.
mmdet's ``CopyPaste`` (Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for
Instance Segmentation", CVPR 2021) pastes the objects of another random image; here the pasted
objects come from a bank of crops of the classes that need them (:mod:`mmimb.transforms.
crop_bank`), the idea of class-aware copy-paste for long-tailed detection (e.g. Zhang et al.,
"A Simple and Effective Use of Object-Centric Images for Long-Tailed Object Detection", 2021;
Dvornik et al., "Modeling Visual Context is Key to Augmenting Object Detection Datasets",
ECCV 2018, for boxes without masks).

The pure core is :func:`paste_patches`: given the objects to paste and where, it blends them and
updates the annotations. Occlusion: every object (existing or pasted earlier) owns a region,
its instance mask when masks are known and its box otherwise; the pixels of the region that a
later paste covers (opacity >= 0.5) are hidden. An object with more than ``occlusion_thr`` of its
region hidden is removed; otherwise its mask loses the hidden pixels and, with ``clip_boxes``,
its box shrinks to the bounding box of what is still visible.

Shape shorthand: ``H x W`` image, ``N`` objects before, ``M`` after, ``h x w`` one patch.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS
from mmdet.structures.bbox import BaseBoxes
from mmdet.structures.mask import BitmapMasks

from mmimb.transforms._common import (
    ProcessRNG,
    build_annotation_dataset,
    check_number,
    check_unit_interval,
)
from mmimb.transforms.crop_bank import (
    CropBank,
    annotations_have_masks,
    check_freq_thr,
    crop_bank_from_dataset,
    mix_crops,
)

#: How a crop is blended: ``'rect'`` opaque, ``'soft'`` with a feathered border (both for crops
#: without a mask; a crop with a mask is pasted through it), ``'mask'`` through its instance
#: mask, which the training set must have, ``'matte'`` through a GrabCut estimate of its
#: foreground made once per crop in the bank (for box-only data; ``'soft'`` where the estimate
#: is degenerate, see :mod:`mmimb.transforms.crop_bank`).
BLENDS: tuple[str, ...] = ("rect", "soft", "mask", "matte")
#: Width of the feathered border of a ``'soft'`` paste, as a fraction of the patch's shorter side.
SOFT_EDGE = 0.15
#: A pixel is covered by a patch (hides what is below, belongs to its mask) from this opacity on.
COVER_ALPHA = 0.5


@dataclass(frozen=True)
class Patch:
    """One object to paste.

    Attributes:
        pixels: ``[h, w, 3]`` the object's pixels, same channel order as the image.
        alpha: ``float32[h, w]`` opacity in ``[0, 1]``.
        x: column of the patch's left edge; ``0 <= x <= W - w``.
        y: row of the patch's top edge; ``0 <= y <= H - h``.
        label: class index.
        tight: the pasted box is the bounding box of the covered pixels (masks) instead of the
            whole patch.
        opaque: every pixel has opacity 1 (computed from ``alpha`` when not given).
        mix_weight: for a mixed instance (:func:`~mmimb.transforms.crop_bank.mix_crops`), the
            weight ``lam`` of its first crop; ``None`` for a single crop.
    """

    pixels: np.ndarray
    alpha: np.ndarray
    x: int
    y: int
    label: int
    tight: bool = False
    opaque: bool | None = None
    mix_weight: float | None = None

    def __post_init__(self) -> None:
        if self.opaque is None:
            object.__setattr__(self, "opaque", bool(self.alpha.min(initial=1) >= 1))


@dataclass(frozen=True)
class PasteResult:
    """Output of :func:`paste_patches`.

    Attributes:
        img: ``[H, W, 3]`` the image with the patches (a new array).
        boxes: ``float32[M, 4]`` ``x1, y1, x2, y2``: the kept objects, then the pasted ones.
        labels: ``int64[M]``.
        ignore: ``bool[M]``; pasted objects are never ignored.
        masks: ``uint8[M, H, W]`` when masks were given, else ``None``.
        kept: ``bool[N]`` which of the original objects remain.
        num_pasted: number of pasted objects among the ``M`` (``M - kept.sum()``).
    """

    img: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    masks: np.ndarray | None
    kept: np.ndarray
    num_pasted: int


Rect = tuple[int, int, int, int]


def _pixel_rect(box: Sequence[float], height: int, width: int) -> Rect:
    """Integer pixel bounds ``x0, y0, x1, y1`` of the pixels a float box touches, in the image."""
    x0 = min(max(math.floor(box[0]), 0), width)
    y0 = min(max(math.floor(box[1]), 0), height)
    x1 = min(max(math.ceil(box[2]), x0), width)
    return x0, y0, x1, min(max(math.ceil(box[3]), y0), height)


def _overlap(a: Rect, b: Rect) -> bool:
    """Whether two pixel rectangles ``x0, y0, x1, y1`` share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _visible_box(visible: np.ndarray, x0: int, y0: int, box: np.ndarray) -> np.ndarray:
    """Bounding box of the ``True`` pixels of ``visible`` (offset ``x0, y0``), within ``box``."""
    rows = np.flatnonzero(visible.any(1)).tolist()
    cols = np.flatnonzero(visible.any(0)).tolist()
    bx0, by0, bx1, by1 = box.tolist()   # Python scalars: numpy scalar arithmetic is slow
    return np.array([max(bx0, x0 + cols[0]), max(by0, y0 + rows[0]),
                     min(bx1, x0 + cols[-1] + 1), min(by1, y0 + rows[-1] + 1)],
                    dtype=np.float32)


def _blend(region: np.ndarray, patch: Patch) -> None:
    """``region = alpha * pixels + (1 - alpha) * region``, rounded for integer images."""
    if patch.opaque:
        region[...] = patch.pixels
    elif region.dtype in (np.uint8, np.float32) and patch.pixels.dtype == region.dtype:
        alpha = np.ascontiguousarray(patch.alpha)
        region[...] = cv2.blendLinear(np.ascontiguousarray(patch.pixels),
                                      np.ascontiguousarray(region), alpha, 1 - alpha)
    else:
        a = patch.alpha[..., None]
        mixed = a * patch.pixels.astype(np.float32) + (1 - a) * region.astype(np.float32)
        region[...] = np.rint(mixed) if np.issubdtype(region.dtype, np.integer) else mixed


def paste_patches(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                  ignore: np.ndarray | None, masks: np.ndarray | None,
                  patches: Sequence[Patch], occlusion_thr: float = 0.7,
                  clip_boxes: bool = True) -> PasteResult:
    """Paste ``patches`` in order onto ``img`` and update the annotations (see module docstring).

    Only objects whose box meets a later patch's rectangle are examined (all of them when masks
    are given), and only inside the patches' bounding rectangle, so the cost grows with the
    pasted area and the overlaps, not with the image.

    Args:
        img: ``[H, W, 3]`` image (any dtype; integer images are blended with rounding).
        boxes: ``float[N, 4]`` existing boxes ``x1, y1, x2, y2``.
        labels: ``int[N]`` their classes.
        ignore: ``bool[N]`` their ignore flags, or ``None`` (none ignored).
        masks: ``[N, H, W]`` their instance masks, or ``None`` (boxes only).
        patches: objects to paste, later ones on top of earlier ones.
        occlusion_thr: an object with a hidden fraction above this is removed.
        clip_boxes: shrink the box of a partly hidden object to its visible part.

    Returns:
        The new image and annotations.

    Raises:
        ValueError: if a patch does not lie inside the image or the inputs disagree in length.
    """
    height, width = img.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    if len(labels) != n or (ignore is not None and len(ignore) != n) \
            or (masks is not None and len(masks) != n):
        raise ValueError(f"boxes ({n}), labels ({len(labels)}), ignore and masks disagree")
    rects: list[Rect] = []
    for p in patches:
        h, w = p.alpha.shape
        if not (0 <= p.x <= width - w and 0 <= p.y <= height - h) or p.pixels.shape[:2] != (h, w):
            raise ValueError(f"patch {h}x{w} at x={p.x}, y={p.y} does not lie inside the "
                             f"{height}x{width} image or its pixels disagree with its alpha")
        rects.append((p.x, p.y, p.x + w, p.y + h))
    out = img.copy()
    new_boxes = boxes.copy()
    new_masks = None if masks is None else np.asarray(masks, dtype=np.uint8).copy()
    kept = np.ones(n, dtype=bool)
    pasted_boxes: list[np.ndarray] = []
    pasted_labels: list[int] = []
    pasted_masks: list[np.ndarray] = []
    if rects:
        # The layer map over the patches' bounding rectangle U = [ux0, ux1) x [uy0, uy1):
        # top[y, x] is the last patch covering the pixel, -1 where the original image shows.
        ux0, uy0 = min(r[0] for r in rects), min(r[1] for r in rects)
        top = np.full((max(r[3] for r in rects) - uy0, max(r[2] for r in rects) - ux0), -1,
                      dtype=np.int32)
        covers = []
        for j, (p, (x0, y0, x1, y1)) in enumerate(zip(patches, rects, strict=True)):
            cover = p.alpha >= COVER_ALPHA
            _blend(out[y0:y1, x0:x1], p)
            top[y0 - uy0:y1 - uy0, x0 - ux0:x1 - ux0][cover] = j
            covers.append(cover)
        hidden_u = top >= 0
        box_list = boxes.tolist()
        for i in range(n):
            if new_masks is not None and new_masks[i].any():
                frac = _hide_mask(new_masks[i], hidden_u, ux0, uy0)
                if 0 < frac <= occlusion_thr and clip_boxes:
                    new_boxes[i] = _visible_box(new_masks[i] > 0, 0, 0, boxes[i])
                kept[i] = frac <= occlusion_thr
                continue
            rect = _pixel_rect(box_list[i], height, width)
            if any(_overlap(rect, r) for r in rects):
                frac, visible = _hide_box(rect, hidden_u, ux0, uy0)
                if visible is not None and clip_boxes and frac <= occlusion_thr:
                    new_boxes[i] = _visible_box(visible, rect[0], rect[1], boxes[i])
                kept[i] = frac <= occlusion_thr
        for j, (p, (x0, y0, x1, y1), cover) in enumerate(zip(patches, rects, covers,
                                                              strict=True)):
            if not cover.any():
                continue
            box = np.array([x0, y0, x1, y1], dtype=np.float32)
            if p.tight:
                box = _visible_box(cover, x0, y0, box)
            visible = cover
            if any(_overlap(rects[j], r) for r in rects[j + 1:]):
                later = top[y0 - uy0:y1 - uy0, x0 - ux0:x1 - ux0] > j
                region = cover if p.tight else np.ones_like(cover)
                hidden = np.count_nonzero(region & later)
                if hidden / np.count_nonzero(region) > occlusion_thr:
                    continue
                visible = cover & ~later
                if hidden and clip_boxes:
                    box = _visible_box(region & ~later, x0, y0, box)
            pasted_boxes.append(box)
            pasted_labels.append(p.label)
            if new_masks is not None:
                full_mask = np.zeros((height, width), dtype=np.uint8)
                full_mask[y0:y1, x0:x1] = visible
                pasted_masks.append(full_mask)
    num_pasted = len(pasted_boxes)
    old_ignore = np.zeros(n, bool) if ignore is None else np.asarray(ignore, dtype=bool)
    return PasteResult(
        img=out,
        boxes=np.concatenate([new_boxes[kept], np.asarray(pasted_boxes, np.float32)
                              .reshape(-1, 4)]),
        labels=np.concatenate([np.asarray(labels, dtype=np.int64)[kept],
                               np.asarray(pasted_labels, dtype=np.int64)]),
        ignore=np.concatenate([old_ignore[kept], np.zeros(num_pasted, dtype=bool)]),
        masks=None if new_masks is None else np.concatenate(
            [new_masks[kept], np.asarray(pasted_masks, np.uint8).reshape(-1, height, width)]),
        kept=kept,
        num_pasted=num_pasted)


def _hide_mask(mask: np.ndarray, hidden_u: np.ndarray, ux0: int, uy0: int) -> float:
    """Clear the pixels of ``mask`` (``uint8[H, W]``, in place) that the patches cover.

    Returns:
        The fraction of the mask's pixels that were cleared.
    """
    sub = mask[uy0:uy0 + hidden_u.shape[0], ux0:ux0 + hidden_u.shape[1]]
    hidden = (sub > 0) & hidden_u
    count = np.count_nonzero(hidden)
    if count == 0:
        return 0.0
    frac = count / np.count_nonzero(mask)
    sub[hidden] = 0
    return frac


def _hide_box(rect: Rect, hidden_u: np.ndarray, ux0: int, uy0: int
              ) -> tuple[float, np.ndarray | None]:
    """Fraction of a box's pixel rectangle that the patches cover, and its visible pixels.

    Returns:
        ``(fraction, visible)``; ``visible`` is ``bool[y1 - y0, x1 - x0]`` over the rectangle,
        or ``None`` when nothing of it is covered.
    """
    x0, y0, x1, y1 = rect
    ix0, iy0 = max(x0, ux0), max(y0, uy0)
    ix1, iy1 = min(x1, ux0 + hidden_u.shape[1]), min(y1, uy0 + hidden_u.shape[0])
    if ix1 <= ix0 or iy1 <= iy0:
        return 0.0, None
    hidden = hidden_u[iy0 - uy0:iy1 - uy0, ix0 - ux0:ix1 - ux0]
    count = np.count_nonzero(hidden)
    if count == 0:
        return 0.0, None
    visible = np.ones((y1 - y0, x1 - x0), dtype=bool)
    visible[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = ~hidden
    return count / visible.size, visible


@functools.lru_cache(maxsize=4096)
def soft_alpha(height: int, width: int, edge: float = SOFT_EDGE) -> np.ndarray:
    """``float32[h, w]`` opacity that rises linearly over a border of ``edge * min(h, w)`` pixels.

    The opacity is the product of a row ramp and a column ramp; the outermost pixels get
    ``1 / (b + 1)`` for a border of ``b`` pixels, the inside 1. The result is cached and
    read-only.
    """
    border = max(1, round(edge * min(height, width)))

    def ramp(n: int) -> np.ndarray:
        i = np.arange(n)
        return np.clip((np.minimum(i, n - 1 - i) + 1) / (border + 1), 0, 1).astype(np.float32)

    alpha = ramp(height)[:, None] * ramp(width)[None, :]
    alpha.flags.writeable = False
    return alpha


def _check_num_objects(num_objects: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(num_objects, int | np.integer) and not isinstance(num_objects, bool):
        lo = hi = int(num_objects)
    elif isinstance(num_objects, Sequence) and len(num_objects) == 2 and all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in num_objects):
        lo, hi = int(num_objects[0]), int(num_objects[1])
    else:
        raise ValueError(f"num_objects must be an int k >= 0 or a range (k_min, k_max) of ints, "
                         f"got {num_objects!r}")
    if not 0 <= lo <= hi:
        raise ValueError(f"num_objects must satisfy 0 <= k_min <= k_max, got {num_objects!r}")
    return lo, hi


def _check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    if not (isinstance(scale_range, Sequence) and len(scale_range) == 2):
        raise ValueError(f"scale_range must be (min, max), got {scale_range!r}")
    lo = check_number(scale_range[0], "scale_range[0]", strict=True)
    hi = check_number(scale_range[1], "scale_range[1]", strict=True)
    if lo > hi:
        raise ValueError(f"scale_range must have min <= max, got {scale_range!r}")
    return lo, hi


def _check_mix_range(mix_range: Sequence[float]) -> tuple[float, float]:
    if not (isinstance(mix_range, Sequence) and len(mix_range) == 2):
        raise ValueError(f"mix_range must be (min, max) in [0, 1], got {mix_range!r}")
    lo = check_unit_interval(mix_range[0], "mix_range[0]", "a weight")
    hi = check_unit_interval(mix_range[1], "mix_range[1]", "a weight")
    if lo > hi:
        raise ValueError(f"mix_range must have min <= max, got {mix_range!r}")
    return lo, hi


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


@TRANSFORMS.register_module()
class RareClassCopyPaste(BaseTransform):
    """Paste ``k`` object crops of rare classes into the image, with scale jitter.

    The crops come from a bank built once per process from the training set (see
    :mod:`mmimb.transforms.crop_bank` for which classes and how many crops, and
    :mod:`mmimb.transforms._common` for how the transform gets the dataset and its determinism
    contract). For each image: with probability ``prob``, draw ``k`` uniformly in
    ``num_objects``; for each object a class ``c ~ P(c)``, a crop of ``c`` uniformly, a scale
    ``s`` log-uniform in ``scale_range`` and a horizontal flip with ``flip_prob``. The crop is
    resized to ``s`` times its original size, times the image's ``scale_factor`` when an earlier
    ``Resize`` set one (so objects keep their dataset scale relative to the image), shrunk to fit
    when larger than the image (both sides by one factor, so its aspect ratio is kept to a
    pixel), placed uniformly at random so it lies inside the image, and pasted
    (:func:`paste_patches`) through its instance mask when the bank has masks, else as a
    rectangle (``blend='rect'``) or with a feathered border (``blend='soft'``), or through its
    estimated matte (``blend='matte'``).

    Blends: ``'rect'`` and ``'soft'`` are for box-only crops; ``'mask'`` requires instance masks
    (the training set's annotations must have them, e.g. COCO ``segmentation``, or
    ``synthetic=dict(with_masks=True)`` for the synthetic set) and pastes only the object's
    pixels; its pasted box is the bounding box of the pasted mask. With masks in the annotations
    and ``use_masks='auto'``, every blend pastes through the masks; ``use_masks=False`` gives a
    rectangle or soft paste of the same data (the ablation of the mask).

    ``'matte'`` is for box-only data: the bank estimates each crop's foreground once, with
    GrabCut initialised from the box and a context margin (:func:`~mmimb.transforms.crop_bank.
    estimate_matte`), and the crop is pasted through that estimate exactly as through an
    instance mask (its box is the bounding box of the pasted matte). A crop whose estimate is
    degenerate (too little or too much of the box, or GrabCut failed) is pasted as with
    ``'soft'``; the bank counts them (``bank.matte_fallbacks``) and logs the count. On data with
    instance masks, ``'matte'`` ignores the annotated masks of the crops and estimates its own
    (so matte and mask can be compared on one dataset); ``use_masks=True`` with ``'matte'``
    raises. Mixing a crop with a matte and one without treats the latter's mask as its whole
    rectangle.

    Instance mixing: with probability ``mix_prob`` a pasted object is a new instance blended
    from two crops of its class (:func:`~mmimb.transforms.crop_bank.mix_crops`, the
    image-space analogue of SMOTE): the drawn crop ``a`` and another crop ``b`` of the class
    drawn uniformly, ``b`` resized to ``a``'s size, with the weight ``lam`` of ``a`` drawn
    uniformly in ``mix_range`` for each paste. The mixed instance keeps the class (both crops
    have it) and is then scaled, flipped and pasted like any crop. Its box is ``a``'s paste box
    (the whole patch) for box-only crops, the bounding box of the union of both masks (the mixed
    extent) with masks. A class with a single crop is pasted unmixed. ``mix_prob=0`` draws
    nothing more, so it reproduces the augmentation of a transform without mixing.

    Bad input: a degenerate box (a side ``<= 0``) is never a crop, and in the image it is kept
    unchanged (it covers no pixel, so no paste hides it). The image must have 3 channels
    (``H x W x 3``): a grayscale (``H x W`` or ``H x W x 1``) or 4-channel image raises
    ``ValueError`` naming ``LoadImageFromFile(color_type='color')``, which converts both (the
    bank always reads its crops that way, so grayscale or RGBA source files give 3-channel
    crops).

    The crops are 8-bit (``uint8``), as ``LoadImageFromFile`` reads images by default, and are
    pasted into 8-bit images, or float images on the same 0-255 scale; an integer image of
    another dtype (16-bit) is refused, as no conversion is right for all of them.

    Required keys: ``img``, ``gt_bboxes`` (``HorizontalBoxes`` or an array), ``gt_bboxes_labels``;
    optional ``gt_ignore_flags``, ``gt_masks`` (``BitmapMasks`` or ``PolygonMasks``),
    ``scale_factor``.
    Modified keys: ``img``, ``gt_bboxes``, ``gt_bboxes_labels``, ``gt_ignore_flags``, ``gt_masks``
    (becomes ``BitmapMasks``; without ``gt_masks`` in ``results`` the pasted masks are dropped
    and only the boxes are added; removed with ``keep_masks=False``). Added key: ``num_pasted``
    (objects pasted and kept).
    ``img_shape`` does not change; ``gt_seg_map`` is not updated.

    Args:
        dataset: the training set or its config dict (e.g. ``{{_base_.train_dataloader.
            dataset}}``); read once per process for statistics and crops.
        classes: paste only these class names (further limited by ``freq_thr``).
        freq_thr: paste classes whose image frequency ``f_c <= freq_thr``; ``None``: all.
        power: class weights ``(1 / f_c) ** power``.
        num_objects: ``k``, or a range ``(k_min, k_max)`` drawn uniformly (both inclusive).
        prob: probability of pasting into an image at all.
        scale_range: ``(min, max)`` of the scale jitter ``s``.
        flip_prob: probability of flipping a crop horizontally.
        blend: ``'rect'`` or ``'soft'`` for crops without mask, ``'mask'`` (masks required), or
            ``'matte'`` (estimated masks, for box-only data). The default ``'rect'`` is the
            blend that lifted rare-group AP in the quality benchmark (synthetic set, 3 seeds);
            ``'soft'`` did not (README, quality benchmark).
        use_masks: crop instance masks (``True``), boxes only (``False``), or masks when the
            annotations have them (``'auto'``); ``blend='mask'`` needs ``True`` or ``'auto'``.
        mix_prob: probability that a pasted object is a mix of two crops of its class.
        mix_range: ``(min, max)`` in ``[0, 1]`` of the weight ``lam`` of the first crop.
        occlusion_thr: fraction of an object's region that may be hidden before it is removed.
        clip_boxes: shrink partly hidden boxes to their visible part.
        max_crops_per_class: most crops per class in the bank.
        min_crop_size: smallest box side (pixels) of a crop.
        max_crop_side: longer side above which crops are stored downscaled.
        keep_masks: ``False`` removes ``gt_masks`` from ``results`` after pasting, in every
            image: for a box-only detector that loads masks for the paste alone, so the
            transforms after it (``Resize``, flips) do not process masks the model ignores.
        seed: seed of the bank and of the per-image draws.
        lazy_init: build the bank on the first call; ``False`` builds it now (in the main
            process, before data loader workers fork and share it).
        backend_args: file backend for reading the bank's images.

    Raises:
        ValueError: naming the argument: at construction for invalid values (``k < 0``, a
            probability outside ``[0, 1]`` ...); when the bank is built for unknown class
            names, a choice of no class, an empty bank, or ``blend='mask'`` on annotations
            without masks; at construction for ``blend='matte'`` with ``use_masks=True``.
    """

    def __init__(self, dataset: Any, classes: Sequence[str] | None = None,
                 freq_thr: float | None = 0.1, power: float = 1.0,
                 num_objects: int | Sequence[int] = (1, 3), prob: float = 1.0,
                 scale_range: Sequence[float] = (0.8, 1.25), flip_prob: float = 0.5,
                 blend: str = "rect", use_masks: bool | str = "auto",
                 mix_prob: float = 0.0, mix_range: Sequence[float] = (0.3, 0.7),
                 occlusion_thr: float = 0.7, clip_boxes: bool = True,
                 max_crops_per_class: int = 50, min_crop_size: float = 4,
                 max_crop_side: int = 256, keep_masks: bool = True, seed: int = 0,
                 lazy_init: bool = True,
                 backend_args: dict[str, Any] | None = None) -> None:
        if dataset is None:
            raise ValueError("dataset is required: the training set or its config dict")
        if classes is not None and (isinstance(classes, str) or not all(
                isinstance(c, str) for c in classes)):
            raise ValueError(f"classes must be a list of class names, got {classes!r}")
        check_freq_thr(freq_thr)
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
        if use_masks not in (True, False, "auto"):
            raise ValueError(f"use_masks must be True, False or 'auto', got {use_masks!r}")
        if blend == "mask" and use_masks is False:
            raise ValueError("blend='mask' pastes through instance masks, but use_masks=False "
                             "crops boxes only; set use_masks='auto' (or True), or choose "
                             "blend='soft' or 'rect'")
        if blend == "matte" and use_masks is True:
            raise ValueError("blend='matte' estimates each crop's mask, but use_masks=True asks "
                             "for the annotated masks; use blend='mask' to paste those, or "
                             "use_masks='auto' with blend='matte'")
        self.dataset = dataset
        self.classes = None if classes is None else list(classes)
        self.freq_thr = freq_thr
        self.power = check_number(power, "power")
        self.num_objects = _check_num_objects(num_objects)
        self.prob = check_unit_interval(prob, "prob")
        self.scale_range = _check_scale_range(scale_range)
        self.flip_prob = check_unit_interval(flip_prob, "flip_prob")
        self.blend = blend
        self.use_masks = use_masks
        self.mix_prob = check_unit_interval(mix_prob, "mix_prob")
        self.mix_range = _check_mix_range(mix_range)
        self.occlusion_thr = check_unit_interval(occlusion_thr, "occlusion_thr", "a fraction")
        self.clip_boxes = bool(clip_boxes)
        self.max_crops_per_class = _positive_int(max_crops_per_class, "max_crops_per_class")
        self.min_crop_size = check_number(min_crop_size, "min_crop_size")
        self.max_crop_side = _positive_int(max_crop_side, "max_crop_side")
        if not isinstance(keep_masks, bool):
            raise TypeError(f"keep_masks must be True or False, got {keep_masks!r}")
        self.keep_masks = keep_masks
        self.backend_args = backend_args
        self._rng = ProcessRNG(seed)
        self.seed = self._rng.seed
        self._bank: CropBank | None = None
        self._class_cdf: Sequence[float] = []
        self._log_scale_range = (math.log(self.scale_range[0]), math.log(self.scale_range[1]))
        if not lazy_init:
            self.full_init()

    def full_init(self) -> None:
        """Build the crop bank (once; later calls return at once)."""
        _ = self.bank

    @property
    def bank(self) -> CropBank:
        """The crop bank, built on first access."""
        if self._bank is None:
            dataset = build_annotation_dataset(self.dataset)
            if self.blend == "mask" and not annotations_have_masks(dataset):
                raise ValueError(
                    f"blend='mask' needs instance masks, but the instances of "
                    f"{type(dataset).__name__} have boxes only (no COCO 'segmentation'); use "
                    "annotations with masks (for the synthetic set: synthetic=dict("
                    "with_masks=True) and another data_root), or blend='soft' or 'rect'")
            bank = crop_bank_from_dataset(
                dataset, classes=self.classes, freq_thr=self.freq_thr, power=self.power,
                max_crops_per_class=self.max_crops_per_class, min_crop_size=self.min_crop_size,
                max_crop_side=self.max_crop_side,
                use_masks=True if self.blend == "mask" else self.use_masks, seed=self.seed,
                backend_args=self.backend_args, matte=self.blend == "matte")
            cdf = np.cumsum(bank.class_probs)
            # Exactly 1 at the end: every u < 1 finds a class. A list: bisect is faster on it.
            self._class_cdf = (cdf / cdf[-1]).tolist()
            self._bank = bank
        return self._bank

    def draw_patches(self, rng: np.random.Generator, height: int, width: int,
                     scale_factor: Sequence[float] = (1.0, 1.0)) -> list[Patch]:
        """Draw the objects to paste into an ``height x width`` image (a number ``k`` of them).

        Args:
            rng: the generator to draw from.
            height: image height.
            width: image width.
            scale_factor: ``(w_scale, h_scale)`` of an earlier resize of the image.

        Returns:
            ``k`` patches, each inside the image.
        """
        bank = self.bank
        lo, hi = self.num_objects
        log_lo, log_hi = self._log_scale_range
        # One row of uniforms per object: class, crop, scale, flip, x, y; then, only when
        # mixing is on (so mix_prob=0 keeps the draws of a transform without it): mix or not,
        # the second crop, the weight.
        draws = rng.random((int(rng.integers(lo, hi + 1)), 6))
        mixes = rng.random((len(draws), 3)).tolist() if self.mix_prob > 0 \
            else [(1.0, 1.0, 1.0)] * len(draws)
        rows = draws.tolist()
        classes = [bisect.bisect_right(self._class_cdf, row[0]) for row in rows]
        mix_lo, mix_hi = self.mix_range
        patches = []
        for c, (_, u_crop, u_scale, u_flip, u_x, u_y), (u_mix, u_other, u_lam) in zip(
                classes, rows, mixes, strict=True):
            members = bank.by_class[c]
            i = int(u_crop * len(members))
            k = int(members[i])
            pixels, mask = bank.crop(k)
            weight = None
            if u_mix < self.mix_prob and len(members) > 1:
                j = int(u_other * (len(members) - 1))
                weight = mix_lo + u_lam * (mix_hi - mix_lo)
                pixels_b, mask_b = bank.crop(int(members[j + (j >= i)]))
                if (mask is None) != (mask_b is None):   # one degenerate matte: its rectangle
                    mask = np.ones(pixels.shape[:2], bool) if mask is None else mask
                    mask_b = np.ones(pixels_b.shape[:2], bool) if mask_b is None else mask_b
                pixels, mask = mix_crops(pixels, mask, pixels_b, mask_b, weight)
            s = math.exp(log_lo + u_scale * (log_hi - log_lo)) / float(bank.scales[k])
            th = max(1, round(pixels.shape[0] * s * scale_factor[1]))
            tw = max(1, round(pixels.shape[1] * s * scale_factor[0]))
            if th > height or tw > width:
                fit = min(height / th, width / tw)
                th, tw = max(1, int(th * fit)), max(1, int(tw * fit))
            x, y = int(u_x * (width - tw + 1)), int(u_y * (height - th + 1))
            flip = u_flip < self.flip_prob
            if (th, tw) != pixels.shape[:2]:
                pixels = cv2.resize(pixels, (tw, th), interpolation=cv2.INTER_LINEAR)
            if flip:
                pixels = cv2.flip(pixels, 1)
            if mask is not None:
                alpha: np.ndarray = mask.astype(np.float32)
                if (th, tw) != mask.shape:
                    alpha = cv2.resize(alpha, (tw, th), interpolation=cv2.INTER_LINEAR)
                patches.append(Patch(pixels, cv2.flip(alpha, 1) if flip else alpha, x, y, c,
                                     tight=True, mix_weight=weight))
            elif self.blend in ("soft", "matte"):   # symmetric: a flip leaves it as it is
                patches.append(Patch(pixels, soft_alpha(th, tw), x, y, c, opaque=False,
                                     mix_weight=weight))
            else:
                patches.append(Patch(pixels, np.ones((th, tw), np.float32), x, y, c,
                                     opaque=True, mix_weight=weight))
        return patches

    def _check_dtype(self, img: np.ndarray, path: str | None) -> None:
        """Refuse an integer image of another dtype than the bank's 8-bit crops.

        The crops keep their values when pasted; in a ``uint16`` image, values 0-255 are
        near-black, and no rescaling is right for every such image (16-bit full range, or
        12-bit data stored in 16 bits). Float images are taken as they are: they are on the
        0-255 scale when an earlier transform (``PhotoMetricDistortion``) converted 8-bit
        pixels.
        """
        crops = self.bank.pixels.dtype
        if img.dtype != crops and img.dtype.kind in "ui":   # an integer image of another dtype
            image = f"the image {path}" if path else "the image"
            raise ValueError(
                f"RareClassCopyPaste: {image} is {img.dtype}, but the crops of "
                f"the bank are {crops} (LoadImageFromFile reads them as 8-bit BGR); pasted as "
                f"they are, their values 0-255 would be wrong in a {img.dtype} image. Load the "
                "training images as 8-bit (LoadImageFromFile's default color_type='color'), "
                "or place RareClassCopyPaste where the image is 8-bit")

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        """Paste objects into ``results`` (see the class docstring for the keys); then drop
        ``gt_masks`` unless ``keep_masks``.

        Raises:
            ValueError: if ``results`` lacks ``img``, ``gt_bboxes`` or ``gt_bboxes_labels``
                (the transform must follow ``LoadAnnotations`` and precede ``PackDetInputs``),
                the image is an integer array of another dtype than ``uint8`` (the crops'),
                such as a 16-bit image, or it does not have 3 channels (grayscale, RGBA).
        """
        missing = [k for k in ("img", "gt_bboxes", "gt_bboxes_labels") if k not in results]
        if missing:
            raise ValueError(f"RareClassCopyPaste needs results {missing}: place it after "
                             f"LoadAnnotations(with_bbox=True) and before PackDetInputs")
        img = results["img"]
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"RareClassCopyPaste needs a 3-channel image (H, W, 3), got shape {img.shape} "
                "(grayscale or with an alpha channel); load it with LoadImageFromFile("
                "color_type='color'), the default, which repeats a gray channel and drops alpha")
        self._check_dtype(img, results.get("img_path"))
        self._paste(results)
        if not self.keep_masks:
            results.pop("gt_masks", None)
        return results

    def _paste(self, results: dict[str, Any]) -> None:
        """Paste into the checked ``results`` in place (with probability ``prob``)."""
        img = results["img"]
        rng = self._rng.get()
        results["num_pasted"] = 0
        if rng.random() >= self.prob:
            return
        height, width = img.shape[:2]
        scale = results.get("scale_factor", (1.0, 1.0))
        patches = self.draw_patches(rng, height, width, (float(scale[0]), float(scale[1])))
        if not patches:
            return
        boxes = results["gt_bboxes"]
        box_array = boxes.numpy() if isinstance(boxes, BaseBoxes) else np.asarray(boxes)
        gt_masks = results.get("gt_masks")
        masks = None if gt_masks is None else gt_masks.to_ndarray()
        out = paste_patches(img, box_array, results["gt_bboxes_labels"],
                            results.get("gt_ignore_flags"), masks, patches,
                            self.occlusion_thr, self.clip_boxes)
        results["img"] = out.img
        results["gt_bboxes"] = type(boxes)(out.boxes) if isinstance(boxes, BaseBoxes) \
            else out.boxes
        results["gt_bboxes_labels"] = out.labels
        results["gt_ignore_flags"] = out.ignore
        if out.masks is not None:
            results["gt_masks"] = BitmapMasks(out.masks, height, width)
        results["num_pasted"] = out.num_pasted

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(classes={self.classes}, freq_thr={self.freq_thr}, "
                f"power={self.power}, num_objects={self.num_objects}, prob={self.prob}, "
                f"scale_range={self.scale_range}, blend={self.blend!r}, "
                f"mix_prob={self.mix_prob}, mix_range={self.mix_range}, "
                f"occlusion_thr={self.occlusion_thr}, seed={self.seed})")
