"""Look at augmented training samples: a PNG grid of what a config's training pipeline produces.

:func:`write_augmented_grid` (``tools/browse_augmented.py``) builds the config's training set,
runs ``num`` images, drawn with a seed, through its full pipeline (the wrapped dataset's and a
``MultiImageMixDataset``'s included) and draws each result with its boxes and class names. The
pipeline's ``PackDetInputs`` is asked to keep the keys that mmimb's transforms add
(``num_pasted``, ``rarity_applied``), so each tile's caption says what happened to it.

The grid has ``cols`` columns of square tiles of ``tile`` pixels, each with a caption strip of
:data:`CAPTION` pixels, separated by :data:`PAD` pixels: its size is given by :func:`grid_size`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmdet.structures.bbox import BaseBoxes
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import set_random_seed
from PIL import Image, ImageDraw, ImageFont

#: Keys that mmimb's transforms add to the results, kept through ``PackDetInputs``.
AUG_META_KEYS: tuple[str, ...] = ("num_pasted", "rarity_prob", "rarity_applied")
#: ``PackDetInputs``'s default ``meta_keys`` (mmdet 3.3).
PACK_META_KEYS: tuple[str, ...] = ("img_id", "img_path", "ori_shape", "img_shape",
                                   "scale_factor", "flip", "flip_direction")
PAD = 4
CAPTION = 18
_BG = (32, 32, 32)


@dataclass(frozen=True)
class Sample:
    """One augmented training sample, ready to draw.

    Attributes:
        image: ``uint8[H, W, 3]`` RGB.
        boxes: ``float32[N, 4]`` ``x1, y1, x2, y2`` in ``image``'s pixels.
        labels: ``int64[N]``.
        caption: one line about the sample.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    caption: str


def grid_size(num: int, tile: int = 256, cols: int | None = None) -> tuple[int, int]:
    """``(width, height)`` in pixels of the grid of ``num`` samples.

    ``cols`` defaults to ``ceil(sqrt(num))``.
    """
    cols = cols or max(1, math.ceil(math.sqrt(num)))
    rows = max(1, math.ceil(num / cols))
    return cols * tile + (cols + 1) * PAD, rows * (tile + CAPTION) + (rows + 1) * PAD


def _keep_aug_keys(cfg: Any) -> Any:
    """Copy of a dataset config whose ``PackDetInputs`` keep :data:`AUG_META_KEYS`."""
    if isinstance(cfg, dict):
        out = {k: _keep_aug_keys(v) for k, v in cfg.items()}
        if out.get("type") == "PackDetInputs":
            keys = tuple(out.get("meta_keys", PACK_META_KEYS))
            out["meta_keys"] = keys + tuple(k for k in AUG_META_KEYS if k not in keys)
        return out
    if isinstance(cfg, list | tuple):
        return type(cfg)(_keep_aug_keys(v) for v in cfg)
    return copy.deepcopy(cfg)


def build_train_dataset(cfg: Config) -> Any:
    """The training set of a config (``train_dataloader.dataset``), with its pipeline.

    Imports the config's ``custom_imports`` (done by ``Config.fromfile``) and sets its
    ``default_scope`` (``'mmdet'`` when it has none).
    """
    from mmdet.registry import DATASETS

    init_default_scope(cfg.get("default_scope", "mmdet"))
    return DATASETS.build(_keep_aug_keys(cfg.train_dataloader.dataset.to_dict()))


def _caption(meta: dict[str, Any], num_boxes: int) -> str:
    parts = [f"id {meta.get('img_id', '?')}", f"{num_boxes} boxes"]
    if meta.get("num_pasted"):
        parts.append(f"+{meta['num_pasted']} pasted")
    if meta.get("rarity_applied"):
        parts.append(f"aug p={meta['rarity_prob']:.2f}")
    return ", ".join(parts)


def to_sample(item: dict[str, Any]) -> Sample:
    """A :class:`Sample` from a pipeline's output (packed by ``PackDetInputs`` or not)."""
    if "data_samples" in item:
        data = item["data_samples"]
        image = item["inputs"].permute(1, 2, 0).cpu().numpy()
        boxes = data.gt_instances.bboxes
        labels = data.gt_instances.labels.cpu().numpy()
        meta = data.metainfo
    else:
        image, boxes, labels, meta = item["img"], item["gt_bboxes"], item["gt_bboxes_labels"], item
    if isinstance(boxes, BaseBoxes):
        boxes = boxes.numpy()
    elif isinstance(boxes, torch.Tensor):
        boxes = boxes.cpu().numpy()
    image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    rgb = np.ascontiguousarray(image[..., ::-1])  # mmdet pipelines carry BGR
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return Sample(rgb, boxes, np.asarray(labels, dtype=np.int64), _caption(meta, len(boxes)))


def augmented_samples(dataset: Any, num: int, seed: int = 0) -> list[Sample]:
    """Run ``num`` images of ``dataset`` (chosen with ``seed``) through its pipeline.

    Seeds python, numpy and torch with ``seed`` first (mmengine's ``set_random_seed``), so the
    same call draws the same augmentations.

    Raises:
        ValueError: if ``num < 1``.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    set_random_seed(seed)
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(dataset), min(num, len(dataset)), replace=False))
    return [to_sample(dataset[int(i)]) for i in indices]


def _palette(num_classes: int) -> list[tuple[int, int, int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    rgb = [cmap(c % 20) for c in range(num_classes)]
    return [(int(255 * r), int(255 * g), int(255 * b)) for r, g, b, _ in rgb]


def draw_grid(samples: Sequence[Sample], classes: Sequence[str], tile: int = 256,
              cols: int | None = None) -> Image.Image:
    """Draw ``samples`` in a grid of :func:`grid_size`, boxes coloured and named by class.

    Each image is scaled to fit its ``tile x tile`` square (nearest neighbour, so pixels stay
    visible), with its caption below.
    """
    cols = cols or max(1, math.ceil(math.sqrt(len(samples))))
    width, height = grid_size(len(samples), tile, cols)
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    colours = _palette(max(len(classes), 1))
    for n, s in enumerate(samples):
        x0 = PAD + (n % cols) * (tile + PAD)
        y0 = PAD + (n // cols) * (tile + CAPTION + PAD)
        h, w = s.image.shape[:2]
        f = tile / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        canvas.paste(Image.fromarray(s.image).resize(size, Image.Resampling.NEAREST), (x0, y0))
        for box, label in zip(s.boxes * f, s.labels, strict=True):
            colour = colours[int(label) % len(colours)]
            bx0, by0, bx1, by1 = (float(v) for v in box)
            draw.rectangle([x0 + bx0, y0 + by0, x0 + bx1 - 1, y0 + by1 - 1], outline=colour,
                           width=2)
            name = classes[label] if 0 <= label < len(classes) else str(int(label))
            tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), name, font=font)
            tx = min(max(x0 + bx0, x0), x0 + tile - (tx1 - tx0) - 2)
            ty = max(y0 + by0 - (ty1 - ty0) - 3, y0)
            draw.rectangle([tx, ty, tx + tx1 - tx0 + 2, ty + ty1 - ty0 + 2], fill=colour)
            draw.text((tx + 1 - tx0, ty + 1 - ty0), name, fill=(0, 0, 0), font=font)
        draw.text((x0 + 2, y0 + tile + 3), s.caption, fill=(230, 230, 230), font=font)
    return canvas


def write_augmented_grid(config: str | Path | Config, out: str | Path, num: int = 16,
                         seed: int = 0, tile: int = 256, cols: int | None = None,
                         cfg_options: dict[str, Any] | None = None) -> Path:
    """Write a PNG grid of ``num`` augmented training samples of ``config``.

    Args:
        config: a config file or a loaded config.
        out: the PNG to write (folders are created).
        num: number of samples.
        seed: chooses the images and seeds the augmentation.
        tile: side of a tile in pixels.
        cols: columns of the grid (default ``ceil(sqrt(num))``).
        cfg_options: overrides merged into the config.

    Returns:
        The path written.
    """
    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    dataset = build_train_dataset(cfg)
    samples = augmented_samples(dataset, num, seed)
    classes = tuple(dataset.metainfo.get("classes", ()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_grid(samples, classes, tile, cols).save(out)
    return out
