"""The object crops that :class:`~mmimb.transforms.RareClassCopyPaste` pastes, and which classes.

Which classes
-------------
From the training statistics (:func:`mmimb.stats.class_frequencies`, ``f_c`` the fraction of
training images that contain class ``c``): the candidates are the classes with
``0 < f_c <= freq_thr`` (every class seen in training when ``freq_thr`` is ``None``), optionally
restricted to named classes, and a pasted object is of class ``c`` with probability

    P(c) = w_c / sum_{c' in S} w_{c'},   w_c = (1 / f_c) ** power,

``S`` the candidates that have at least one crop in the bank. ``power = 0`` pastes every chosen
class equally often; ``power = 1`` makes the pasted count of a class proportional to ``1 / f_c``;
``power = 0.5`` is the square root of LVIS's repeat factors (Gupta et al., CVPR 2019).

The bank
--------
At most ``max_crops_per_class`` instances per class, drawn uniformly without replacement with a
generator seeded by ``seed`` alone, so every process (every data loader worker) builds the same
bank. Instances flagged ``ignore_flag`` and boxes with a side under ``min_crop_size`` pixels are
never crops, nor are degenerate boxes (a side ``<= 0``, or not finite). Images are read as
3-channel 8-bit BGR whatever their file holds (``LoadImageFromFile``'s ``color_type='color'``: a
grayscale file is repeated over the channels, an alpha channel is dropped). A crop whose longer
side exceeds ``max_crop_side`` is stored downscaled (and its scale kept, so it is pasted at its
original size). All pixels live in one flat ``uint8`` buffer, so the bank holds at most ``C_S *
max_crops_per_class * max_crop_side ** 2 * 4`` bytes (pixels and mask) and a forked worker
shares it copy-on-write. Masks are stored when the dataset has instance masks; box-only datasets
give rectangular crops.

Estimated mattes (box-only data)
--------------------------------
With ``matte=True`` every crop's foreground is estimated once, when the crop enters the bank, by
GrabCut (Rother, Kolmogorov and Blake, "GrabCut: interactive foreground extraction using
iterated graph cuts", SIGGRAPH 2004; ``cv2.grabCut`` with ``GC_INIT_WITH_RECT``): the box is
the rectangle that holds the object, a context margin of :data:`MATTE_MARGIN` times the box's
sides around it (inside the image) is sure background, and :data:`MATTE_ITERS` iterations
refine the colour models. The estimate is computed at the stored crop's resolution (after the
``max_crop_side`` downscale, so its cost is bounded), with OpenCV's random generator reseeded
first, so it is deterministic. It is stored as the crop's mask and pasted through the mask path.
An estimate is degenerate, and the crop is pasted as a soft rectangle instead, when its
foreground covers less than :data:`MATTE_MIN_FG` or more than :data:`MATTE_MAX_FG` of the box
(GrabCut found no object, or found the whole box, where the rectangle is as good), or when
GrabCut raises (no background pixel around a box that fills its image); the bank counts these
(:attr:`CropBank.matte_fallbacks`) and logs the count.

Instance mixing
---------------
:func:`mix_crops` blends two crops of one class into a new instance of that class, the
image-space analogue of SMOTE (Chawla et al., "SMOTE: Synthetic Minority Over-sampling
Technique", JAIR 2002), which creates a minority sample ``x_a + u (x_b - x_a)`` between two
samples of the class. Here the pair is any two crops of the class (not nearest neighbours, which
have no meaning for pixels) and the interpolation is per pixel, as in mixup (Zhang et al.,
ICLR 2018) restricted to one class, so the label needs no mixing.

Shape shorthand: ``C`` classes, ``K`` crops, ``P`` pixels of all crops together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import cv2
import mmcv
import numpy as np
from mmdet.registry import TRANSFORMS
from mmdet.structures.bbox import BaseBoxes
from mmengine.logging import print_log

from mmimb.stats import ClassStats, class_frequencies, dataset_classes
from mmimb.transforms._common import (
    BANK_STREAM,
    check_number,
    check_seed,
    class_indices,
    class_stats_of,
)

_SEED_MASK = (1 << 64) - 1
#: Context around a box given to GrabCut as sure background, as a fraction of each box side
#: (at least :data:`MATTE_MIN_MARGIN` pixels), clipped to the image.
MATTE_MARGIN = 0.1
MATTE_MIN_MARGIN = 4
#: GrabCut iterations; the estimate changes little after a few on a crop.
MATTE_ITERS = 3
#: An estimated foreground covering less / more than this fraction of its box is degenerate.
MATTE_MIN_FG = 0.15
MATTE_MAX_FG = 0.95


def paste_class_probs(stats: ClassStats, freq_thr: float | None = None, power: float = 1.0,
                      classes: Sequence[int] | np.ndarray | None = None,
                      by: str = "image") -> np.ndarray:
    """Probability of pasting each class, ``P(c) ∝ (1 / f_c) ** power`` over the chosen classes.

    Args:
        stats: class counts of the training set.
        freq_thr: choose the classes with ``f_c <= freq_thr``; ``None`` chooses every class
            seen in training.
        power: exponent ``p >= 0`` of the inverse frequency.
        classes: restrict the choice to these class indices.
        by: ``f_c`` over ``'image'`` or ``'instance'`` (:func:`mmimb.stats.class_frequencies`).

    Returns:
        ``float64[C]``, zero outside the chosen classes, summing to 1.

    Raises:
        ValueError: naming the argument, if ``freq_thr`` is not in ``(0, 1]``, ``power`` is
            negative, or no class is chosen.
    """
    check_freq_thr(freq_thr)
    check_number(power, "power")
    freq = class_frequencies(stats, by)
    chosen = freq > 0
    if freq_thr is not None:
        chosen &= freq <= freq_thr
    if classes is not None:
        named = np.zeros_like(chosen)
        named[np.asarray(classes, dtype=np.int64)] = True
        chosen &= named
    if not chosen.any():
        seen = freq[freq > 0]
        rarest = float(seen.min()) if len(seen) else 0.0
        raise ValueError(
            f"freq_thr={freq_thr} and classes={None if classes is None else list(classes)} "
            f"choose no class seen in training (rarest class frequency by {by}: {rarest:.4g}); "
            f"raise freq_thr or name other classes")
    weights = np.zeros_like(freq)
    weights[chosen] = freq[chosen] ** -power
    return weights / weights.sum()


def check_freq_thr(freq_thr: float | None) -> None:
    """Raises ``ValueError`` unless ``freq_thr`` is ``None`` or a number in ``(0, 1]``."""
    if freq_thr is not None and not (isinstance(freq_thr, int | float | np.number)
                                     and 0 < freq_thr <= 1):
        raise ValueError(f"freq_thr must be None or a class frequency in (0, 1], got "
                         f"{freq_thr!r}")


class CropBank:
    """Object crops of chosen classes, in one flat buffer (see the module docstring).

    Args:
        pixels: ``uint8[P, 3]`` the pixels of every crop, crop after crop, row-major.
        masks: ``bool[P]`` which pixels belong to the object, or ``None`` (rectangular crops).
        shapes: ``int64[K, 2]`` height and width of every stored crop.
        labels: ``int64[K]`` class of every crop.
        scales: ``float64[K]`` stored size / original size of every crop (1 unless downscaled).
        sources: ``int64[K, 2]`` dataset index of the image and index of the instance in it.
        class_probs: ``float64[C]`` probability of pasting each class; zero for classes without
            crops.
        classes: class names.
        has_mask: ``bool[K]`` which crops have a mask; ``None``: all of them when ``masks`` is
            given. A crop without one (a degenerate matte) holds an all-``True`` mask in
            ``masks`` and :meth:`crop` gives it none.
        matte: the masks are GrabCut estimates (see the module docstring), not annotations.
        matte_ms: ``float64[K]`` milliseconds each matte estimate took (a matte bank only).

    Raises:
        ValueError: if the arrays disagree in length, or the bank is empty.
    """

    def __init__(self, pixels: np.ndarray, masks: np.ndarray | None, shapes: np.ndarray,
                 labels: np.ndarray, scales: np.ndarray, sources: np.ndarray,
                 class_probs: np.ndarray, classes: Sequence[str] = (),
                 has_mask: np.ndarray | None = None, matte: bool = False,
                 matte_ms: np.ndarray | None = None) -> None:
        if len(labels) == 0:
            raise ValueError("the crop bank is empty")
        sizes = shapes[:, 0] * shapes[:, 1]
        if len(shapes) != len(labels) or len(scales) != len(labels) \
                or len(sources) != len(labels) \
                or len(pixels) != sizes.sum() or (masks is not None and len(masks) != len(pixels)) \
                or (has_mask is not None and (masks is None or len(has_mask) != len(labels))):
            raise ValueError("pixels, masks, has_mask, shapes, labels and scales of a crop bank "
                             "disagree")
        self.pixels, self.masks, self.shapes = pixels, masks, shapes
        self.labels, self.scales, self.sources = labels, scales, sources
        self.class_probs = class_probs
        self.classes = tuple(classes)
        self.has_mask = (None if masks is None else np.ones(len(labels), bool)) \
            if has_mask is None else np.asarray(has_mask, dtype=bool)
        self.matte = bool(matte)
        self.matte_ms = matte_ms
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # (start, end, h, w) of each crop as Python ints: slicing with them is several times
        # faster than with numpy scalars, and crop() runs for every paste.
        self._spans = list(zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist(),
                               shapes[:, 0].tolist(), shapes[:, 1].tolist(), strict=True))
        self.by_class = [np.flatnonzero(labels == c) for c in range(len(class_probs))]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        """Bytes held by the crops' pixels and masks."""
        return self.pixels.nbytes + (0 if self.masks is None else self.masks.nbytes)

    @property
    def matte_fallbacks(self) -> int:
        """Number of crops whose estimated matte was degenerate (pasted as soft rectangles)."""
        return 0 if not self.matte or self.has_mask is None else int((~self.has_mask).sum())

    def crop(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Crop ``k``: ``uint8[h, w, 3]`` pixels and ``bool[h, w]`` mask (``None`` if boxes only
        or, for a matte bank, if the crop's matte was degenerate).

        Both are views into the bank; do not modify them.
        """
        start, end, h, w = self._spans[k]
        mask = None if self.masks is None or self.has_mask is None or not self.has_mask[k] \
            else self.masks[start:end].reshape(h, w)
        return self.pixels[start:end].reshape(h, w, 3), mask


def _box_array(boxes: Any) -> np.ndarray:
    if isinstance(boxes, BaseBoxes):
        return boxes.numpy()
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def annotations_have_masks(dataset: Any) -> bool:
    """Whether the dataset's instances carry masks (``'mask'``, from COCO ``segmentation``).

    The first image with instances decides (mmdet datasets give masks to all or none).
    """
    for idx in range(len(dataset)):
        instances = dataset.get_data_info(idx).get("instances", [])
        if instances:
            return "mask" in instances[0]
    return False


def _has_masks(dataset: Any, use_masks: bool | str) -> bool:
    """Whether to crop masks: ``use_masks``, or (``'auto'``) whether the annotations have them.

    Raises:
        ValueError: if ``use_masks`` is invalid, or ``True`` for annotations without masks.
    """
    if use_masks not in (True, False, "auto"):
        raise ValueError(f"use_masks must be True, False or 'auto', got {use_masks!r}")
    if use_masks is False:
        return False
    annotated = annotations_have_masks(dataset)
    if use_masks is True and not annotated:
        raise ValueError("use_masks=True, but the dataset's instances have no 'mask' "
                         "(boxes only); use use_masks='auto' or False")
    return annotated


def _crop_candidates(dataset: Any, probs: np.ndarray, min_crop_size: float
                     ) -> list[list[tuple[int, int]]]:
    """``(image index, instance index)`` of every usable instance, per chosen class."""
    out: list[list[tuple[int, int]]] = [[] for _ in probs]
    for idx in range(len(dataset)):
        for j, inst in enumerate(dataset.get_data_info(idx).get("instances", [])):
            c = inst["bbox_label"]
            x0, y0, x1, y1 = inst["bbox"]
            side = min(x1 - x0, y1 - y0)   # NaN for a non-finite box: never a crop
            if probs[c] > 0 and not inst.get("ignore_flag", 0) \
                    and side > 0 and side >= min_crop_size:
                out[c].append((idx, j))
    return out


def _empty_bank_error(dataset: Any, probs: np.ndarray, min_crop_size: float) -> ValueError:
    names = dataset_classes(dataset) or tuple(str(c) for c in range(len(probs)))
    chosen = [n for n, p in zip(names, probs, strict=True) if p > 0]
    return ValueError(f"the crop bank is empty: the chosen classes {chosen} have no instance "
                      f"with both box sides >= min_crop_size={min_crop_size} inside its image")


def mix_crops(pixels_a: np.ndarray, mask_a: np.ndarray | None, pixels_b: np.ndarray,
              mask_b: np.ndarray | None, weight: float) -> tuple[np.ndarray, np.ndarray | None]:
    """A new instance blended from crops ``a`` and ``b`` of one class (see the module docstring).

    ``b`` is first resized to ``a``'s ``h x w`` (bilinear pixels, nearest-neighbour mask). With
    ``lam = weight``:

    - boxes only: ``pixels = lam * a + (1 - lam) * b`` everywhere, rounded; the mixed crop
      covers the whole ``h x w`` rectangle, so its pasted box is ``a``'s.
    - masks: ``mask = mask_a | mask_b`` (the mixed extent); a pixel in both masks is
      ``lam * a + (1 - lam) * b``, a pixel in one mask is that crop's own (so no background of
      the other crop is blended in); its pasted box is the bounding box of the union.

    Args:
        pixels_a: ``uint8[h, w, 3]`` the first crop.
        mask_a: ``bool[h, w]`` its mask, or ``None`` (boxes only).
        pixels_b: ``uint8[h', w', 3]`` the second crop.
        mask_b: ``bool[h', w']`` its mask; ``None`` exactly when ``mask_a`` is.
        weight: ``lam`` in ``[0, 1]``, the weight of ``a``.

    Returns:
        ``(pixels, mask)``: ``uint8[h, w, 3]`` and ``bool[h, w]`` (``None`` for boxes only).

    Raises:
        ValueError: if ``weight`` is outside ``[0, 1]`` or only one crop has a mask.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    if (mask_a is None) != (mask_b is None):
        raise ValueError("mix_crops needs masks for both crops or for neither")
    h, w = pixels_a.shape[:2]
    if pixels_b.shape[:2] != (h, w):
        pixels_b = mmcv.imresize(pixels_b, (w, h), interpolation="bilinear")
    a, b = pixels_a.astype(np.float32), pixels_b.astype(np.float32)
    if mask_a is None or mask_b is None:
        return np.rint(weight * a + (1 - weight) * b).astype(np.uint8), None
    if mask_b.shape != (h, w):
        mask_b = mmcv.imresize(mask_b.astype(np.uint8), (w, h),
                               interpolation="nearest").astype(bool)
    own = np.where((mask_b & ~mask_a)[..., None], b, a)
    mixed = np.where((mask_a & mask_b)[..., None], weight * a + (1 - weight) * b, own)
    return np.rint(mixed).astype(np.uint8), mask_a | mask_b


def estimate_matte(image: np.ndarray, rect: tuple[int, int, int, int],
                   iters: int = MATTE_ITERS) -> np.ndarray | None:
    """GrabCut estimate of the object's pixels inside ``rect`` (see the module docstring).

    Pixels of ``image`` outside ``rect`` are sure background; OpenCV's random generator is
    reseeded (``cv2.setRNGSeed(0)``) first, so the result depends on the input alone.

    Args:
        image: ``uint8[H, W, 3]`` the box with its context.
        rect: ``(x, y, w, h)`` of the box inside ``image``.
        iters: GrabCut iterations.

    Returns:
        ``bool[h, w]`` foreground inside ``rect``, or ``None`` when the estimate is degenerate
        (foreground fraction outside ``[MATTE_MIN_FG, MATTE_MAX_FG]``, or GrabCut raised).
    """
    x, y, w, h = rect
    labels = np.zeros(image.shape[:2], np.uint8)
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(np.ascontiguousarray(image), labels, (x, y, w, h), bgd_model, fgd_model,
                    iters, cv2.GC_INIT_WITH_RECT)
    except cv2.error:   # e.g. no background sample: the box fills its context
        return None
    inside = labels[y:y + h, x:x + w]
    fg = (inside == cv2.GC_FGD) | (inside == cv2.GC_PR_FGD)
    return fg if MATTE_MIN_FG <= fg.mean() <= MATTE_MAX_FG else None


def _crop_matte(img: np.ndarray, box: tuple[int, int, int, int], scale: float,
                shape: tuple[int, int]) -> np.ndarray | None:
    """:func:`estimate_matte` of the pixel box ``xa, ya, xb, yb`` of ``img`` with its context
    margin, at the stored crop's ``scale`` and ``shape`` (``h, w``)."""
    xa, ya, xb, yb = box
    h_img, w_img = img.shape[:2]
    mx = math.ceil(max(MATTE_MIN_MARGIN, MATTE_MARGIN * shape[1]) / scale)
    my = math.ceil(max(MATTE_MIN_MARGIN, MATTE_MARGIN * shape[0]) / scale)
    cx0, cy0 = max(xa - mx, 0), max(ya - my, 0)
    cx1, cy1 = min(xb + mx, w_img), min(yb + my, h_img)
    context = img[cy0:cy1, cx0:cx1]
    if scale < 1.0:
        context = mmcv.imresize(context, (max(1, round((cx1 - cx0) * scale)),
                                          max(1, round((cy1 - cy0) * scale))),
                                interpolation="area")
    ch, cw = context.shape[:2]
    x, y = min(round((xa - cx0) * scale), cw - 1), min(round((ya - cy0) * scale), ch - 1)
    rect = (x, y, max(1, min(shape[1], cw - x)), max(1, min(shape[0], ch - y)))
    matte = estimate_matte(context, rect)
    if matte is not None and matte.shape != shape:
        matte = mmcv.imresize(matte.astype(np.uint8), (shape[1], shape[0]),
                              interpolation="nearest").astype(bool)
    return matte


def draw_mattes(bank: CropBank, tile: int = 128, cols: int = 4) -> np.ndarray:
    """A BGR picture of every crop of ``bank`` beside its mask, to look at estimated mattes.

    Each crop is a pair of ``tile x tile`` squares (the crop scaled to fit): the crop, then the
    crop with the pixels outside its mask dimmed to a quarter and the mask's outline drawn in
    green; a crop without a mask (a degenerate matte, pasted as a soft rectangle) gets a red
    frame instead. ``cols`` pairs per row, in bank order (by image, then instance).

    Returns:
        ``uint8[rows * (tile + 4) + 4, cols * (2 * tile + 8) + 4, 3]``.
    """
    rows = math.ceil(len(bank) / cols)
    out = np.full((rows * (tile + 4) + 4, cols * (2 * tile + 8) + 4, 3), 32, np.uint8)
    for k in range(len(bank)):
        pixels, mask = bank.crop(k)
        f = tile / max(pixels.shape[:2])
        size = (max(1, round(pixels.shape[1] * f)), max(1, round(pixels.shape[0] * f)))
        crop = cv2.resize(pixels, size, interpolation=cv2.INTER_NEAREST)
        shown = crop.copy()
        if mask is None:
            cv2.rectangle(shown, (0, 0), (size[0] - 1, size[1] - 1), (0, 0, 255), 2)
        else:
            m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            shown[m == 0] //= 4
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(shown, contours, -1, (0, 255, 0), 1)
        y, x = 4 + (k // cols) * (tile + 4), 4 + (k % cols) * (2 * tile + 8)
        out[y:y + size[1], x:x + size[0]] = crop
        out[y:y + size[1], x + tile + 2:x + tile + 2 + size[0]] = shown
    return out


def build_crop_bank(dataset: Any, probs: np.ndarray, max_crops_per_class: int = 50,
                    min_crop_size: float = 4, max_crop_side: int = 256,
                    use_masks: bool | str = "auto", seed: int = 0,
                    backend_args: dict[str, Any] | None = None,
                    matte: bool = False) -> CropBank:
    """Crop at most ``max_crops_per_class`` objects of every class with ``probs[c] > 0``.

    Images are read with mmdet's ``LoadImageFromFile`` (BGR, as in training) and
    ``LoadAnnotations``, each image once.

    Args:
        dataset: the initialised training set (``get_data_info`` with ``img_path`` and
            ``instances``).
        probs: ``float64[C]`` class probabilities from :func:`paste_class_probs`.
        max_crops_per_class: most crops kept of one class.
        min_crop_size: instances with a box side below this (pixels) are skipped.
        max_crop_side: crops with a longer side are stored downscaled to it.
        use_masks: crop instance masks too; ``'auto'`` when the annotations have them.
        seed: seed of the choice of instances.
        backend_args: file backend of ``LoadImageFromFile``.
        matte: store a GrabCut estimate of each crop's foreground as its mask (module
            docstring); annotated masks are then not read, so ``use_masks`` must not be
            ``True``.

    Returns:
        The bank; its ``class_probs`` are ``probs`` renormalised over classes with crops.

    Raises:
        ValueError: naming the argument, on invalid values, ``matte`` with ``use_masks=True``,
            or when no chosen class has an instance that can be cropped (empty bank).
    """
    if isinstance(max_crops_per_class, bool) or not isinstance(max_crops_per_class, int) \
            or max_crops_per_class < 1:
        raise ValueError(f"max_crops_per_class must be an int >= 1, got {max_crops_per_class!r}")
    if matte and use_masks is True:
        raise ValueError("matte=True estimates the masks, but use_masks=True asks for the "
                         "annotated ones; set use_masks='auto' or False with matte=True")
    with_mask = not matte and _has_masks(dataset, use_masks)
    rng = np.random.default_rng(np.random.SeedSequence([check_seed(seed) & _SEED_MASK,
                                                         BANK_STREAM]))
    picked: dict[int, list[tuple[int, int]]] = {}  # image -> [(instance, class)]
    for c, cands in enumerate(_crop_candidates(dataset, probs, min_crop_size)):
        if not cands:
            continue
        take = np.sort(rng.choice(len(cands), min(len(cands), max_crops_per_class),
                                  replace=False))
        for t in take:
            idx, j = cands[int(t)]
            picked.setdefault(idx, []).append((j, c))
    if not picked:
        raise _empty_bank_error(dataset, probs, min_crop_size)
    load = [TRANSFORMS.build(dict(type="LoadImageFromFile", backend_args=backend_args)),
            TRANSFORMS.build(dict(type="LoadAnnotations", with_bbox=True, with_mask=with_mask,
                                  backend_args=backend_args))]
    pixels: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    shapes, labels, scales, sources = [], [], [], []
    has_mask: list[bool] = []
    matte_ms: list[float] = []
    for idx in sorted(picked):
        results = dict(dataset.get_data_info(idx))
        for t in load:
            results = t(results)
        img = results["img"]
        boxes = _box_array(results["gt_bboxes"])
        gt_masks = results["gt_masks"].to_ndarray() if with_mask else None
        h_img, w_img = img.shape[:2]
        for j, c in picked[idx]:
            x0, y0, x1, y1 = boxes[j]
            xa, ya = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
            xb, yb = min(int(np.ceil(x1)), w_img), min(int(np.ceil(y1)), h_img)
            if xb <= xa or yb <= ya:
                continue
            patch = img[ya:yb, xa:xb]
            mask = None if gt_masks is None else gt_masks[j, ya:yb, xa:xb].astype(bool)
            if mask is not None and not mask.any():
                continue
            scale = min(1.0, max_crop_side / max(patch.shape[:2]))
            if scale < 1.0:
                size = (max(1, round(patch.shape[1] * scale)),
                        max(1, round(patch.shape[0] * scale)))
                patch = mmcv.imresize(patch, size, interpolation="area")
                if mask is not None:
                    mask = mmcv.imresize(mask.astype(np.uint8), size,
                                         interpolation="nearest").astype(bool)
            if matte:
                start = time.perf_counter()
                mask = _crop_matte(img, (xa, ya, xb, yb), scale, patch.shape[:2])
                matte_ms.append(1e3 * (time.perf_counter() - start))
                has_mask.append(mask is not None)
                if mask is None:
                    mask = np.ones(patch.shape[:2], dtype=bool)
            pixels.append(np.ascontiguousarray(patch, dtype=np.uint8).reshape(-1, 3))
            if mask is not None:
                masks.append(mask.reshape(-1))
            shapes.append(patch.shape[:2])
            labels.append(c)
            scales.append(scale)
            sources.append((idx, j))
    if not labels:
        raise _empty_bank_error(dataset, probs, min_crop_size)
    label_arr = np.asarray(labels, dtype=np.int64)
    has_crops = np.bincount(label_arr, minlength=len(probs)) > 0
    class_probs = np.where(has_crops, probs, 0.0)
    if matte:
        print_log(f"crop bank mattes: {len(has_mask) - sum(has_mask)} of {len(has_mask)} "
                  f"degenerate (foreground outside [{MATTE_MIN_FG}, {MATTE_MAX_FG}] of the box, "
                  f"or GrabCut failed), pasted as soft rectangles; median "
                  f"{np.median(matte_ms):.1f} ms per estimate", logger="current")
    return CropBank(
        pixels=np.concatenate(pixels),
        masks=np.concatenate(masks) if with_mask or matte else None,
        has_mask=np.asarray(has_mask, dtype=bool) if matte else None,
        matte=matte,
        matte_ms=np.asarray(matte_ms, dtype=np.float64) if matte else None,
        shapes=np.asarray(shapes, dtype=np.int64).reshape(-1, 2),
        labels=label_arr,
        scales=np.asarray(scales, dtype=np.float64),
        sources=np.asarray(sources, dtype=np.int64).reshape(-1, 2),
        class_probs=class_probs / class_probs.sum(),
        classes=dataset_classes(dataset))


def crop_bank_from_dataset(dataset: Any, classes: Sequence[str] | None = None,
                           freq_thr: float | None = None, power: float = 1.0, by: str = "image",
                           **kwargs: Any) -> CropBank:
    """Statistics, class choice and bank of an initialised training set in one call.

    Args:
        dataset: the initialised training set.
        classes: restrict the choice to these class names.
        freq_thr: see :func:`paste_class_probs`.
        power: see :func:`paste_class_probs`.
        by: see :func:`paste_class_probs`.
        **kwargs: passed to :func:`build_crop_bank`.

    Raises:
        ValueError: naming the argument: unknown class names, no chosen class, empty bank.
    """
    stats = class_stats_of(dataset)
    names = dataset_classes(dataset)
    chosen = None if classes is None else class_indices(classes, names, "classes")
    probs = paste_class_probs(stats, freq_thr, power, chosen, by)
    return build_crop_bank(dataset, probs, **kwargs)
