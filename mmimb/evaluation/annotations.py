"""Reading and checking COCO, LVIS and LVIS category-info annotation files.

Three formats are recognised by their content:

- **COCO** json: ``images``, ``annotations``, ``categories``.
- **LVIS** json (v0.5 / v1): COCO-like, with a ``frequency`` letter (``r``/``c``/``f``) in every
  category and ``not_exhaustive_category_ids`` / ``neg_category_ids`` on images.
- **LVIS category info** (``lvis_v1_train_cat_info.json`` as distributed with Detic): a list of
  categories, each with ``id``, ``name``, ``image_count``, ``instance_count`` and ``frequency``,
  but no images. Its counts are read as they are; the number of training images is not in
  the file.

:func:`check_coco` refuses files that cannot be evaluated or counted correctly (duplicate image
or category ids, annotations naming an unknown image or category, malformed boxes) and reports,
without dropping them, boxes of zero or negative width or height. Counting itself is done by
:mod:`mmimb.stats`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmimb.stats import ClassStats, class_stats_from_coco

#: How many offending ids an error or report quotes.
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class AnnotationIssues:
    """Problems of an annotation file that do not prevent using it, counted and reported.

    Attributes:
        source: the file (or a description of the data) the issues were found in.
        num_degenerate_boxes: boxes with width or height ``<= 0``. They are kept: a ground-truth
            box of zero size can never be matched (its IoU with anything is 0), so, unless the
            metric is told to ignore them, each one counts as a miss of its class (COCOeval
            ignores a box whose ``area`` is negative).
        degenerate_examples: up to :data:`MAX_EXAMPLES` descriptions of such boxes.
    """

    source: str
    num_degenerate_boxes: int = 0
    degenerate_examples: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.num_degenerate_boxes > 0

    def summary(self) -> str:
        """One line for a log, or ``''`` when there is nothing to report."""
        if not self:
            return ""
        return (f"{self.source}: {self.num_degenerate_boxes} box(es) of zero or negative size, "
                f"e.g. {'; '.join(self.degenerate_examples)}")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "num_degenerate_boxes": self.num_degenerate_boxes,
                "degenerate_examples": list(self.degenerate_examples)}


def _examples(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:MAX_EXAMPLES])
    more = len(values) - MAX_EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def _duplicates(ids: Sequence[Any]) -> list[Any]:
    return [i for i, n in Counter(ids).items() if n > 1]


def check_coco(data: dict[str, Any], source: str = "annotation file") -> AnnotationIssues:
    """Check a COCO/LVIS annotation dict; raise on what cannot be used, report the rest.

    Args:
        data: the loaded json.
        source: name of the file, quoted in messages.

    Returns:
        The :class:`AnnotationIssues` (boxes of zero or negative size).

    Raises:
        ValueError: naming ``source`` and the offending ids, if ``images`` or ``categories`` is
            missing, image or category ids repeat, an annotation names an image or category that
            is not defined, or a ``bbox`` is not four finite numbers.
    """
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{source}: no '{key}' list; a COCO/LVIS annotation file needs "
                             "'images', 'annotations' and 'categories'")
    image_ids = [img["id"] for img in data["images"]]
    cat_ids = [cat["id"] for cat in data["categories"]]
    for what, ids in (("image", image_ids), ("category", cat_ids)):
        dup = _duplicates(ids)
        if dup:
            raise ValueError(f"{source}: duplicate {what} ids {_examples(dup)}; every {what} "
                             "must have a unique id")
    anns = data.get("annotations", [])
    known_cats, known_imgs = set(cat_ids), set(image_ids)
    bad_cat = [(a.get("id"), a["category_id"]) for a in anns if a["category_id"] not in known_cats]
    if bad_cat:
        raise ValueError(
            f"{source}: {len(bad_cat)} annotation(s) have unknown category ids, e.g. "
            f"(annotation id, category id) {_examples(bad_cat)}; the file defines category ids "
            f"{_examples(sorted(known_cats))}")
    bad_img = [(a.get("id"), a["image_id"]) for a in anns if a["image_id"] not in known_imgs]
    if bad_img:
        raise ValueError(
            f"{source}: {len(bad_img)} annotation(s) name images that are not in 'images', e.g. "
            f"(annotation id, image id) {_examples(bad_img)}")
    if not anns:
        return AnnotationIssues(source)
    try:
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64)
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{source}: every annotation needs a 'bbox' of four numbers [x, y, w, h] "
                         f"({err})") from err
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise ValueError(f"{source}: every 'bbox' must be four finite numbers [x, y, w, h]")
    degenerate = np.flatnonzero((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0))
    names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
    examples = tuple(
        f"annotation {anns[i].get('id')} (image {anns[i]['image_id']}, "
        f"{names[anns[i]['category_id']]}): w={boxes[i, 2]:g}, h={boxes[i, 3]:g}"
        for i in degenerate[:MAX_EXAMPLES])
    return AnnotationIssues(source, len(degenerate), examples)


def is_cat_info(data: Any) -> bool:
    """Whether ``data`` is an LVIS category-info file (categories with counts, no images)."""
    cats: Any = data if isinstance(data, list) else None
    if isinstance(data, dict) and "images" not in data and "annotations" not in data:
        cats = data.get("categories")
    return isinstance(cats, list) and bool(cats) and all(isinstance(c, dict) and "image_count" in c
                              and "instance_count" in c for c in cats)


def category_frequency(categories: Sequence[dict[str, Any]]) -> tuple[str, ...] | None:
    """LVIS ``frequency`` letters in increasing category-id order, or None if any is missing."""
    cats = sorted(categories, key=lambda c: c["id"])
    if not cats or any("frequency" not in c for c in cats):
        return None
    return tuple(c["frequency"] for c in cats)


@dataclass(frozen=True)
class TrainSource:
    """Training-set statistics read from an annotation file.

    Attributes:
        stats: per-class counts, classes in increasing category-id order.
        frequency: LVIS ``frequency`` letter of every class, when the file has them.
        kind: ``'coco'``, ``'lvis'``, ``'lvis-cat-info'``, or ``'dataset'`` when the statistics
            were handed over (:meth:`~mmimb.evaluation.LongTailMetric.set_class_stats`).
        num_images_known: False for category-info files, which do not record how many images
            the training set has; ``stats.num_images`` is then the given ``num_images`` or, as a
            lower bound, the largest ``image_count``.
        issues: problems found in the file.
    """

    stats: ClassStats
    frequency: tuple[str, ...] | None
    kind: str
    num_images_known: bool
    issues: AnnotationIssues


def load_json(path: str | Path) -> Any:
    """Load a json file, with a clear error if it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"annotation file {str(path)!r} is not JSON ({err}); give a COCO/LVIS "
                         "json or an LVIS category-info json") from err


def stats_from_cat_info(data: Any, source: str = "category info",
                        num_images: int | None = None) -> TrainSource:
    """Statistics from an LVIS category-info file (per-class counts, no images).

    Args:
        data: the loaded file (a list of categories, or a dict with a ``categories`` list).
        source: name of the file, for messages.
        num_images: number of training images, which the file does not record (LVIS v1 train:
            100,170).

    Raises:
        ValueError: on duplicate category ids, negative counts, or ``num_images`` smaller than
            a class's image count.
    """
    cats = sorted(data if isinstance(data, list) else data["categories"], key=lambda c: c["id"])
    dup = _duplicates([c["id"] for c in cats])
    if dup:
        raise ValueError(f"{source}: duplicate category ids {_examples(dup)}")
    images = np.array([c["image_count"] for c in cats], dtype=np.int64)
    instances = np.array([c["instance_count"] for c in cats], dtype=np.int64)
    if (images < 0).any() or (instances < 0).any():
        raise ValueError(f"{source}: image_count and instance_count must be >= 0")
    if num_images is not None and num_images < images.max(initial=0):
        raise ValueError(f"num_images={num_images} is smaller than the largest image_count "
                         f"({images.max()}) in {source}")
    stats = ClassStats(instances, images,
                       num_images=int(num_images if num_images is not None
                                      else images.max(initial=0)),
                       num_empty_images=0, classes=tuple(c["name"] for c in cats))
    return TrainSource(stats, category_frequency(cats), "lvis-cat-info", num_images is not None,
                       AnnotationIssues(source))


def load_train_source(ann: str | Path | dict[str, Any] | list[Any],
                      num_images: int | None = None) -> TrainSource:
    """Training statistics from a COCO json, an LVIS json or an LVIS category-info file.

    Args:
        ann: a path, or the loaded json.
        num_images: for category-info files only, the number of training images.

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: if the file is invalid (see :func:`check_coco`).
    """
    source = str(ann) if isinstance(ann, str | Path) else "annotation dict"
    data = load_json(ann) if isinstance(ann, str | Path) else ann
    if is_cat_info(data):
        return stats_from_cat_info(data, source, num_images)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a COCO/LVIS json object or an LVIS category-info "
                         f"list, got a {type(data).__name__}")
    issues = check_coco(data, source)
    frequency = category_frequency(data["categories"])
    lvis = frequency is not None or any("neg_category_ids" in img for img in data["images"][:1])
    return TrainSource(class_stats_from_coco(data), frequency, "lvis" if lvis else "coco", True,
                       issues)
