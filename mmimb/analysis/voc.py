"""Reader of Pascal VOC annotation folders (``Annotations/*.xml`` + ``ImageSets/Main/*.txt``).

It returns :class:`mmimb.stats.ImageLabels`, so the counting itself stays in :mod:`mmimb.stats`,
and follows mmdet's ``VOCDataset``: objects marked ``difficult`` are ignored (mmdet sets their
``ignore_flag``) unless ``include_difficult``; boxes of zero or negative size are kept, as mmdet
keeps them, and are counted and reported in :class:`~mmimb.evaluation.AnnotationIssues`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mmimb.evaluation.annotations import MAX_EXAMPLES, AnnotationIssues
from mmimb.stats import ClassStats, ImageLabels


@dataclass(frozen=True)
class VocAnnotations:
    """The labels of one split of a VOC folder.

    Attributes:
        image_labels: per-image class indices (difficult objects excluded unless asked for).
        classes: class names, indexed by the labels.
        image_ids: the split's image ids, in file order.
        num_difficult: objects marked difficult (excluded from ``image_labels`` by default).
        issues: boxes of zero or negative size (kept in ``image_labels``).
    """

    image_labels: ImageLabels
    classes: tuple[str, ...]
    image_ids: tuple[str, ...]
    num_difficult: int
    issues: AnnotationIssues

    @property
    def stats(self) -> ClassStats:
        """:class:`~mmimb.stats.ClassStats` of the split."""
        return ClassStats.from_image_labels(self.image_labels, self.classes)


def is_voc_folder(path: str | Path) -> bool:
    """Whether ``path`` holds ``Annotations/`` and ``ImageSets/Main/``."""
    path = Path(path)
    return (path / "Annotations").is_dir() and (path / "ImageSets" / "Main").is_dir()


def voc_splits(root: str | Path) -> list[str]:
    """Names of the splits in ``ImageSets/Main`` (``train``, ``val`` ...)."""
    return sorted(p.stem for p in (Path(root) / "ImageSets" / "Main").glob("*.txt")
                  if "_" not in p.stem)  # skip the per-class files, e.g. aeroplane_train.txt


#: The coordinates of a VOC ``<bndbox>``, in box order.
BOX_KEYS: tuple[str, ...] = ("xmin", "ymin", "xmax", "ymax")


def _objects(xml_path: Path) -> list[tuple[str, bool, tuple[float, float, float, float]]]:
    """``(name, difficult, (xmin, ymin, xmax, ymax))`` of every object of one file.

    Raises:
        ValueError: naming the file (and the object, counted from 1), if the file is not
            well-formed XML, or an ``<object>`` lacks ``<name>`` or ``<bndbox>``, or a box lacks
            a coordinate or has one that is not a finite number (mmdet's ``VOCDataset`` fails
            on those too, with an ``AttributeError``).
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{xml_path}: not well-formed XML ({err}); fix or remove the file, or "
                         "leave its image out of the split") from None
    out = []
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            missing = "<name>" if not name else "<bndbox>"
            raise ValueError(f"{xml_path}: <object> number {number} ({name or 'no name'}) has "
                             f"no {missing}")
        coords = []
        for key in BOX_KEYS:
            text = (box.findtext(key) or "").strip()
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value):
                what = f"a non-numeric <{key}> {text!r}" if text else f"no <{key}>"
                raise ValueError(f"{xml_path}: <object> number {number} ({name!r}) has {what} "
                                 f"in its <bndbox>; a box needs finite {', '.join(BOX_KEYS)}")
            coords.append(value)
        out.append((name, (obj.findtext("difficult") or "0").strip() == "1",
                    (coords[0], coords[1], coords[2], coords[3])))
    return out


def read_voc(root: str | Path, split: str | None = "trainval",
             classes: Sequence[str] | None = None, include_difficult: bool = False,
             progress: bool = False) -> VocAnnotations:
    """Read the labels of a VOC split.

    Args:
        root: the VOC folder (with ``Annotations/`` and ``ImageSets/Main/``).
        split: a file of ``ImageSets/Main`` (``'train'``, ``'val'`` ...); None reads every
            ``Annotations/*.xml``.
        classes: class names in label order; by default the names found, sorted.
        include_difficult: count objects marked difficult too.
        progress: show a progress bar.

    Returns:
        The :class:`VocAnnotations`.

    Raises:
        FileNotFoundError: if the folder, the split file or an annotation file is missing.
        ValueError: on a repeated image id in the split, an object of a class not in
            ``classes``, a file that is not well-formed XML, or a malformed object (each
            naming the file).
    """
    root = Path(root)
    if not is_voc_folder(root):
        inner = [p for p in root.iterdir() if is_voc_folder(p)] if root.is_dir() else []
        hint = f"; did you mean {str(inner[0])!r}?" if inner else ""
        raise FileNotFoundError(f"{str(root)!r} is not a Pascal VOC folder (no Annotations/ and "
                                f"ImageSets/Main/){hint}")
    if split is None:
        ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    else:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"no split {split!r} in {root}: {split_file} is missing "
                                    f"(splits: {voc_splits(root)})")
        ids = split_file.read_text().split()
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise ValueError(f"split {split!r} of {root} lists image ids more than once: "
                         f"{repeated[:MAX_EXAMPLES]}")
    objects = []
    for image_id in tqdm(ids, desc=f"reading {root.name} {split or 'all'}", unit="file",
                         disable=not progress):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise FileNotFoundError(f"annotation file {xml_path} of image {image_id!r} is missing")
        objects.append(_objects(xml_path))
    found = sorted({name for objs in objects for name, _, _ in objs})
    names = tuple(classes) if classes is not None else tuple(found)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"{root}: objects of unknown classes {unknown[:MAX_EXAMPLES]}; "
                         f"classes are {list(names)}")
    index = {name: i for i, name in enumerate(names)}
    per_image: list[list[int]] = []
    degenerate: list[str] = []
    num_difficult = 0
    for image_id, objs in zip(ids, objects, strict=True):
        labels = []
        for name, difficult, (x1, y1, x2, y2) in objs:
            num_difficult += difficult
            if difficult and not include_difficult:
                continue
            if x2 <= x1 or y2 <= y1:
                degenerate.append(f"{image_id} ({name}): [{x1:g}, {y1:g}, {x2:g}, {y2:g}]")
            labels.append(index[name])
        per_image.append(labels)
    issues = AnnotationIssues(f"{root} {split or 'all'}", len(degenerate),
                              tuple(degenerate[:MAX_EXAMPLES]))
    return VocAnnotations(ImageLabels.from_lists(per_image, max(len(names), 1)), names,
                          tuple(ids), num_difficult, issues)
