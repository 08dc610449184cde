"""A synthetic long-tailed detection dataset in COCO format, generated on demand from a seed.

Classes are ``(shape, texture)`` pairs: a circle, square, triangle ... drawn solid, striped or
checkered, in a random colour on a noisy background. Class ``c`` has shape ``c % S`` and texture
``c // S`` (``S`` shapes), and training instance counts follow a power law in the class index
(Zipf): ``n_c = round(n_max * (c + 1) ** -a)`` with ``a = ln(imbalance_ratio) / ln(C)``, so the
head class has ``imbalance_ratio`` times as many instances as the tail class. The frequent
classes are the solid shapes; the rare ones are the same shapes with another texture, so a
rare class is confusable with a frequent one and imbalance matters. The validation split is
balanced, with ``val_per_class`` instances of every class, so every class's AP is measurable.

With ``with_masks=True`` every annotation also carries its instance mask, the exact set of
pixels the shape was drawn on, as compressed COCO RLE (``segmentation: {size, counts}``,
:mod:`pycocotools.mask`). Objects never overlap, so the mask is the visible object. The images,
boxes and ``area`` (the box's, as without masks) are byte-identical with and without masks; the
masks cost no random draws. mmdet reads RLE with ``LoadAnnotations(with_mask=True)`` and its
default ``poly2mask=True`` (``poly2mask=False`` accepts polygons only and would ignore them).

Layout written under ``root``::

    root/meta.json                 generation arguments (the cache key)
    root/annotations/train.json    COCO format (with ``segmentation`` RLE when with_masks)
    root/annotations/val.json
    root/train/*.png, root/val/*.png
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "hexagon")
TEXTURES: tuple[str, ...] = ("solid", "striped", "checkered")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
#: Command that creates the default dataset, quoted in error messages.
MAKE_COMMAND = "python tools/make_synthetic_data.py --out {root}"


@dataclass(frozen=True)
class SyntheticConfig:
    """Arguments of the generator; equal configs give byte-identical datasets.

    Attributes:
        num_classes: number of classes, 2 to 18.
        max_instances: training instances of the most frequent class.
        imbalance_ratio: head-to-tail ratio of training instance counts, >= 1.
        val_per_class: validation instances of every class.
        image_size: side of the square images, in pixels.
        min_size: smallest object side, in pixels.
        max_size: largest object side, in pixels.
        max_objects: most objects per image (at least 1).
        empty_fraction: fraction of extra training images without any object.
        seed: random seed.
        with_masks: write every instance's mask (COCO RLE) beside its box.
    """

    num_classes: int = 12
    max_instances: int = 1500
    imbalance_ratio: float = 100.0
    val_per_class: int = 25
    image_size: int = 128
    min_size: int = 16
    max_size: int = 44
    max_objects: int = 4
    empty_fraction: float = 0.03
    seed: int = 0
    with_masks: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {self.num_classes}")
        if not self.imbalance_ratio >= 1:
            raise ValueError(f"imbalance_ratio must be >= 1, got {self.imbalance_ratio}")
        if self.max_instances < self.imbalance_ratio:
            raise ValueError(
                f"max_instances ({self.max_instances}) must be >= imbalance_ratio "
                f"({self.imbalance_ratio}) so the tail class has at least one instance")
        if self.val_per_class < 1:
            raise ValueError(f"val_per_class must be >= 1, got {self.val_per_class}")
        if not 4 <= self.min_size <= self.max_size:
            raise ValueError(
                f"min_size ({self.min_size}) must be >= 4 and <= max_size ({self.max_size})")
        if self.max_size > self.image_size:
            raise ValueError(
                f"max_size ({self.max_size}) does not fit in image_size ({self.image_size})")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not 0 <= self.empty_fraction < 1:
            raise ValueError(f"empty_fraction must be in [0, 1), got {self.empty_fraction}")
        if not isinstance(self.with_masks, bool):
            raise ValueError(f"with_masks must be True or False, got {self.with_masks!r}")


def generation_args(cfg: SyntheticConfig) -> dict[str, Any]:
    """The arguments stored in ``meta.json``: every field, ``with_masks`` only when True.

    So a box-only dataset's ``meta.json`` (and the cache check against it) is what it was before
    masks existed.
    """
    args = asdict(cfg)
    if not cfg.with_masks:
        del args["with_masks"]
    return args


def make_command(root: str | os.PathLike[str], cfg: SyntheticConfig) -> str:
    """The ``tools/make_synthetic_data.py`` command that generates ``cfg`` under ``root``."""
    default = SyntheticConfig()
    flags = [f" --{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
             for k, v in asdict(cfg).items() if v != getattr(default, k)]
    return MAKE_COMMAND.format(root=root) + "".join(flags)


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the synthetic classes, ``'{texture}_{shape}'``, most frequent first."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    ns = _num_shapes(num_classes)
    return tuple(f"{TEXTURES[c // ns]}_{SHAPES[c % ns]}" for c in range(num_classes))


def _num_shapes(num_classes: int) -> int:
    """Fewest shapes that give every class a texture, so most shapes come in every texture."""
    return min(len(SHAPES), math.ceil(num_classes / len(TEXTURES)))


def train_counts(cfg: SyntheticConfig) -> np.ndarray:
    """``int64[C]`` training instances per class: Zipf with the configured head:tail ratio."""
    exponent = math.log(cfg.imbalance_ratio) / math.log(cfg.num_classes)
    ranks = np.arange(1, cfg.num_classes + 1, dtype=np.float64)
    return np.maximum(1, np.round(cfg.max_instances * ranks ** -exponent)).astype(np.int64)


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of ``shape`` filling its box."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    s = size - 1
    h = s / 2
    if shape == "circle":
        draw.ellipse([0, 0, s, s], fill=1)
    elif shape == "square":
        draw.rectangle([0, 0, s, s], fill=1)
    elif shape == "triangle":
        draw.polygon([(h, 0), (s, s), (0, s)], fill=1)
    elif shape == "diamond":
        draw.polygon([(h, 0), (s, h), (h, s), (0, h)], fill=1)
    elif shape == "cross":
        t = size / 6
        draw.rectangle([h - t, 0, h + t, s], fill=1)
        draw.rectangle([0, h - t, s, h + t], fill=1)
    else:  # hexagon
        draw.polygon([(h + h * math.cos(a), h + h * math.sin(a))
                      for a in np.linspace(0, 2 * math.pi, 7)[:-1]], fill=1)
    return np.asarray(img, dtype=bool)


def _texture(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """``float[size, size]`` brightness multiplier of a texture (1 = base colour)."""
    if texture == "solid":
        return np.ones((size, size))
    period = int(rng.integers(4, 7))
    yy, xx = np.mgrid[:size, :size] + int(rng.integers(0, period))
    if texture == "striped":
        dark = (yy // (period // 2 or 1)) % 2 == 0
    else:  # checkered
        dark = ((yy // (period // 2 or 1)) + (xx // (period // 2 or 1))) % 2 == 0
    return np.where(dark, 0.35, 1.0)


def _background(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """``float[H, W, 3]`` noisy, smoothly varying background."""
    n = cfg.image_size
    coarse = rng.uniform(60, 200, size=(4, 4, 3))
    smooth = Image.fromarray(coarse.astype(np.uint8)).resize((n, n), Image.Resampling.BILINEAR)
    return np.asarray(smooth, dtype=np.float64) + rng.normal(0, 8, size=(n, n, 3))


def _place(boxes: list[tuple[int, int, int]], size: int, n: int,
           rng: np.random.Generator) -> tuple[int, int] | None:
    """Top-left corner for a ``size`` box that overlaps no box in ``boxes``, or None."""
    for _ in range(30):
        x, y = (int(v) for v in rng.integers(0, n - size + 1, size=2))
        if all(x + size <= bx or bx + bs <= x or y + size <= by or by + bs <= y
               for bx, by, bs in boxes):
            return x, y
    return None


def _rle(mask: np.ndarray, x: int, y: int, image_size: int) -> dict[str, Any]:
    """Compressed COCO RLE (json-ready) of ``mask`` placed at column ``x``, row ``y``."""
    full = np.zeros((image_size, image_size), dtype=np.uint8, order="F")
    full[y:y + mask.shape[0], x:x + mask.shape[1]] = mask
    rle = mask_utils.encode(full)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _render_split(cfg: SyntheticConfig, labels: np.ndarray, split: str, root: Path,
                  rng: np.random.Generator, num_empty: int) -> dict[str, Any]:
    """Pack ``labels`` (one entry per instance) into images and write them with their json."""
    names = class_names(cfg.num_classes)
    shapes = [n.split("_", 1)[1] for n in names]
    textures = [n.split("_", 1)[0] for n in names]
    (root / split).mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    queue = list(rng.permutation(labels))
    while queue or num_empty > 0:
        n_obj = 0 if not queue else int(rng.integers(1, cfg.max_objects + 1))
        if not queue:
            num_empty -= 1
        canvas = _background(cfg, rng)
        image_id = len(images) + 1
        placed: list[tuple[int, int, int]] = []
        for _ in range(n_obj):
            if not queue:
                break
            size = int(rng.integers(cfg.min_size, cfg.max_size + 1))
            corner = _place(placed, size, cfg.image_size, rng)
            if corner is None:
                break
            label = int(queue.pop())
            x, y = corner
            placed.append((x, y, size))
            mask = _shape_mask(shapes[label], size)
            hue = rng.uniform(80, 255, size=3)
            colour = _texture(textures[label], size, rng)[..., None] * hue
            patch = canvas[y:y + size, x:x + size]
            patch[mask] = colour[mask]
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                   "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                   "area": int((x1 - x0) * (y1 - y0)), "iscrowd": 0}
            if cfg.with_masks:
                ann["segmentation"] = _rle(mask, x, y, cfg.image_size)
            annotations.append(ann)
        file_name = f"{split}_{image_id:06d}.png"
        pixels = np.clip(canvas, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / file_name, optimize=False)
        images.append({"id": image_id, "file_name": file_name,
                       "width": cfg.image_size, "height": cfg.image_size})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def generate(root: str | os.PathLike[str], cfg: SyntheticConfig | None = None,
             **kwargs: Any) -> Path:
    """Generate the dataset under ``root``, or reuse it when it is already there.

    Generation writes into a temporary sibling folder and renames it into place, so an
    interrupted run or several processes generating at once never leave a half-written
    dataset behind.

    Args:
        root: output folder.
        cfg: generator arguments; ``kwargs`` build one when omitted.
        **kwargs: fields of :class:`SyntheticConfig`.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if an argument is invalid, or ``root`` holds a dataset generated with
            different arguments.
    """
    cfg = cfg or SyntheticConfig(**kwargs)
    root = Path(root)
    meta_path = root / "meta.json"
    if meta_path.exists():
        existing = json.loads(meta_path.read_text())
        if existing != generation_args(cfg):
            raise ValueError(
                f"{root} holds a synthetic dataset generated with {existing}, not "
                f"{generation_args(cfg)}; remove the folder or choose another root")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rng = np.random.default_rng(cfg.seed)
        train_labels = np.repeat(np.arange(cfg.num_classes), train_counts(cfg))
        val_labels = np.repeat(np.arange(cfg.num_classes), cfg.val_per_class)
        num_empty = round(cfg.empty_fraction * len(train_labels) / (1 + cfg.max_objects) * 2)
        (tmp / "annotations").mkdir()
        for split, labels, empty in (("train", train_labels, num_empty), ("val", val_labels, 0)):
            coco = _render_split(cfg, labels, split, tmp, rng, empty)
            (tmp / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        (tmp / "meta.json").write_text(json.dumps(generation_args(cfg), indent=1))
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: keep its identical copy
            if not meta_path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
