"""The embedded synthetic long-tail dataset: shape of the distribution, determinism, errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmdet.registry import DATASETS
from PIL import Image

from mmimb.datasets.synthetic import SyntheticConfig, class_names, generate, train_counts
from mmimb.stats import class_stats_from_coco
from tests.conftest import TINY


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_default_config_is_long_tailed_and_confusable() -> None:
    cfg = SyntheticConfig()
    counts = train_counts(cfg)
    assert cfg.num_classes >= 10
    assert counts[0] / counts[-1] >= 100
    assert np.all(np.diff(counts) <= 0)
    # Power law: log(count) is linear in log(rank), slope -ln(ratio)/ln(C).
    slope = np.polyfit(np.log(np.arange(1, 13)), np.log(counts), 1)[0]
    assert slope == pytest.approx(-np.log(100) / np.log(12), rel=0.02)
    names = class_names(cfg.num_classes)
    shapes = [n.split("_")[1] for n in names]
    head_shapes = set(shapes[:4])
    # Every one of the four rarest classes has the shape of a frequent class, another texture.
    for name in names[-4:]:
        texture, shape = name.split("_")
        assert shape in head_shapes and texture != "solid"


def test_default_dataset_counts(tmp_path: Path) -> None:
    root = generate(tmp_path / "lt", SyntheticConfig())
    train = class_stats_from_coco(root / "annotations/train.json")
    val = class_stats_from_coco(root / "annotations/val.json")
    assert train.instance_counts.tolist() == train_counts(SyntheticConfig()).tolist()
    assert val.instance_counts.min() >= 20
    assert train.num_empty_images > 0  # background-only images exist
    coco = json.loads((root / "annotations/train.json").read_text())
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128


def test_generation_is_deterministic_and_cached(tmp_path: Path, tiny_root: Path) -> None:
    again = generate(tmp_path / "again", TINY)
    assert tree_digest(again) == tree_digest(tiny_root)
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*.png")}
    assert generate(again, TINY) == again  # reused, nothing rewritten
    assert before == {p: p.stat().st_mtime_ns for p in again.rglob("*.png")}
    other = generate(tmp_path / "other", replace(TINY, seed=2))
    assert tree_digest(other) != tree_digest(tiny_root)


def test_root_with_other_arguments_is_not_overwritten(tiny_root: Path) -> None:
    with pytest.raises(ValueError, match="generated with"):
        generate(tiny_root, replace(TINY, seed=99))


@pytest.mark.parametrize("kwargs, name", [
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 19}, "num_classes"),
    ({"imbalance_ratio": 0.5}, "imbalance_ratio"),
    ({"max_instances": 10, "imbalance_ratio": 100}, "max_instances"),
    ({"max_size": 200}, "max_size"),
    ({"min_size": 30, "max_size": 20}, "min_size"),
    ({"min_size": 2}, "min_size"),
    ({"val_per_class": 0}, "val_per_class"),
    ({"max_objects": 0}, "max_objects"),
    ({"empty_fraction": 1.0}, "empty_fraction"),
])
def test_invalid_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SyntheticConfig(**kwargs)


def test_missing_folder_names_the_command(tmp_path: Path) -> None:
    import mmimb  # noqa: F401

    dataset = DATASETS.build(dict(type="SyntheticLongTailDataset", data_root=str(tmp_path / "x"),
                                  generate_if_missing=False, lazy_init=True, pipeline=[]))
    with pytest.raises(FileNotFoundError, match="tools/make_synthetic_data.py"):
        dataset.full_init()


def test_dataset_generates_on_first_use(tmp_path: Path) -> None:
    import mmimb  # noqa: F401

    dataset = DATASETS.build(dict(type="SyntheticLongTailDataset", data_root=str(tmp_path / "d"),
                                  synthetic=asdict(TINY), split="val", pipeline=[]))
    assert dataset.metainfo["classes"] == class_names(TINY.num_classes)
    labels = [i["bbox_label"] for k in range(len(dataset))
              for i in dataset.get_data_info(k)["instances"]]
    assert np.bincount(labels).tolist() == [TINY.val_per_class] * TINY.num_classes


# ---------------------------------------------------------------------------------------------
# Instance masks (with_masks=True): exact drawn pixels as COCO RLE, decoded with pycocotools.

#: Every shape and texture (18 classes), few instances: a second or two to generate.
MASKED = SyntheticConfig(num_classes=18, max_instances=12, imbalance_ratio=2, val_per_class=1,
                         image_size=64, min_size=10, max_size=24, max_objects=3, seed=3,
                         with_masks=True)
#: Area of each shape as a fraction of its bounding box, and its perimeter from the box W x H.
SHAPE_AREA = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5,
              "cross": 5 / 9, "hexagon": 0.75}


def shape_perimeter(shape: str, w: float, h: float) -> float:
    return {"circle": np.pi * (w + h) / 2, "square": 2 * (w + h),
            "triangle": w + 2 * np.hypot(w / 2, h), "diamond": 2 * np.hypot(w, h),
            "cross": 2 * (w + h), "hexagon": 3 * w}[shape]


@pytest.fixture(scope="module")
def masked_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("masked") / "m", MASKED)


def test_masks_are_the_drawn_pixels(masked_root: Path) -> None:
    from pycocotools import mask as mask_utils

    coco = json.loads((masked_root / "annotations/train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    shapes_seen = set()
    for ann in coco["annotations"]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        x, y, w, h = ann["bbox"]
        # Inside its box, and tight: the box is the mask's bounding box.
        assert mask[y:y + h, x:x + w].sum() == mask.sum() > 0
        np.testing.assert_array_equal(mask_utils.toBbox(ann["segmentation"]), [x, y, w, h])
        # The area agrees with the shape's analytic area within a one-pixel border.
        shape = names[ann["category_id"]].split("_")[1]
        shapes_seen.add(shape)
        assert abs(mask.sum() - SHAPE_AREA[shape] * w * h) <= shape_perimeter(shape, w, h)
        # The mask is exactly the drawn pixels: at most two colours (texture x hue) inside,
        # none of them in the one-pixel ring around it (the noisy background).
        img = np.asarray(Image.open(masked_root / "train" / files[ann["image_id"]]))
        inside = {tuple(p) for p in img[mask]}
        assert len(inside) <= (1 if names[ann["category_id"]].startswith("solid") else 2)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        ring &= ~mask
        assert not inside & {tuple(p) for p in img[ring]}
    assert shapes_seen == set(SHAPE_AREA)


def test_masks_change_only_the_json(masked_root: Path, tmp_path: Path) -> None:
    plain = generate(tmp_path / "plain", replace(MASKED, with_masks=False))
    for split in ("train", "val"):
        for png in sorted((plain / split).glob("*.png")):
            assert png.read_bytes() == (masked_root / split / png.name).read_bytes()
        a, b = (json.loads((r / f"annotations/{split}.json").read_text())
                for r in (plain, masked_root))
        for ann in b["annotations"]:
            assert ann.pop("segmentation")["size"] == [64, 64]
        assert a == b
    # A box-only dataset's meta.json is the one written before masks existed (no new key).
    meta = json.loads((plain / "meta.json").read_text())
    assert "with_masks" not in meta and meta == {k: v for k, v in asdict(MASKED).items()
                                                 if k != "with_masks"}
    assert json.loads((masked_root / "meta.json").read_text())["with_masks"] is True
    with pytest.raises(ValueError, match="generated with"):
        generate(plain, MASKED)


def test_masked_dataset_loads_masks_in_mmdet(masked_root: Path, tmp_path: Path) -> None:
    from mmdet.structures.mask import BitmapMasks
    from mmengine.registry import init_default_scope

    import mmimb  # noqa: F401

    init_default_scope("mmdet")
    pipeline = [dict(type="LoadImageFromFile"),
                dict(type="LoadAnnotations", with_bbox=True, with_mask=True)]
    dataset = DATASETS.build(dict(type="SyntheticLongTailDataset", data_root=str(masked_root),
                                  synthetic=asdict(MASKED), pipeline=pipeline))
    for idx in range(5):
        out = dataset[idx]
        masks, boxes = out["gt_masks"], out["gt_bboxes"].numpy()
        assert isinstance(masks, BitmapMasks) and len(masks) == len(boxes)
        assert not out["gt_ignore_flags"].any()
        for m, (x0, y0, x1, y1) in zip(masks.masks, boxes, strict=True):
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            assert [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1] == [x0, y0, x1, y1]
    # Missing data with masks: the error names the command with the flag.
    missing = DATASETS.build(dict(type="SyntheticLongTailDataset", data_root=str(tmp_path / "x"),
                                  synthetic=asdict(MASKED), generate_if_missing=False,
                                  lazy_init=True, pipeline=[]))
    with pytest.raises(FileNotFoundError, match="--with-masks"):
        missing.full_init()


def test_with_masks_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="with_masks"):
        SyntheticConfig(with_masks="yes")  # type: ignore[arg-type]
