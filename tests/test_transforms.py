"""RareClassCopyPaste and RarityConditionedApply.

References: the class choice against a loop over the COCO json; crops against the image files
read with PIL; the paste core against a per-pixel loop (which patch shows at each pixel, what
each object keeps); the rarity mapping against hand-computed probabilities and its coin against
a binomial tolerance (5 standard deviations). Then both transforms in real pipelines of
``CocoDataset`` and ``VOCDataset`` (before and after ``Resize``/``RandomFlip``, up to
``PackDetInputs``), under ``MultiImageMixDataset``, through a 2-worker ``DataLoader``, and inside
the mmengine ``Runner`` with the repository's experiment configs.
"""

from __future__ import annotations

import copy
import json
import random
from collections import defaultdict
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mmdet.datasets import MultiImageMixDataset
from mmdet.registry import DATASETS, TRANSFORMS
from mmdet.structures.bbox import HorizontalBoxes
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.dataset import pseudo_collate, worker_init_fn
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from mmimb.datasets.synthetic import class_names
from mmimb.stats import ClassStats, ImageLabels
from mmimb.transforms import (
    Patch,
    RareClassCopyPaste,
    RarityConditionedApply,
    class_apply_probs,
    paste_class_probs,
    paste_patches,
)
from mmimb.transforms.copy_paste import soft_alpha
from tests.conftest import REPO, TINY

CLASSES = class_names(TINY.num_classes)


@pytest.fixture(autouse=True)
def _mmdet_scope() -> None:
    init_default_scope("mmdet")


@TRANSFORMS.register_module(name="MmimbTestInvert", force=True)
class Invert:
    """Inverts the image: a deterministic, visible stand-in for an augmentation."""

    def __call__(self, results: dict) -> dict:
        results["img"] = 255 - results["img"]
        return results


@TRANSFORMS.register_module(name="MmimbTestDrop", force=True)
class Drop:
    """Drops the sample, as mmdet transforms do by returning None."""

    def __call__(self, results: dict) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# Datasets on the tiny synthetic data: COCO as generated, VOC converted from it, COCO with masks.


def coco_cfg(root: Path, ann: str = "annotations/train.json", **kw: Any) -> dict[str, Any]:
    return dict(type="CocoDataset", data_root=f"{root}/", ann_file=ann,
                data_prefix=dict(img="train/"), metainfo=dict(classes=CLASSES),
                filter_cfg=dict(filter_empty_gt=False), pipeline=[], **kw)


def voc_cfg(root: Path, **kw: Any) -> dict[str, Any]:
    return dict(type="VOCDataset", data_root=f"{root}/",
                ann_file="VOC2007/ImageSets/Main/train.txt",
                data_prefix=dict(sub_data_root="VOC2007/"), metainfo=dict(classes=CLASSES),
                filter_cfg=dict(filter_empty_gt=False), pipeline=[], **kw)


def load_coco(root: Path) -> dict[str, Any]:
    return json.loads((root / "annotations" / "train.json").read_text())


@pytest.fixture(scope="session")
def voc_root(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny training set in VOC layout (1-based corners, as VOC writes them)."""
    coco = load_coco(tiny_root)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = defaultdict(list)
    for a in coco["annotations"]:
        anns[a["image_id"]].append(a)
    root = tmp_path_factory.mktemp("voc")
    sub = root / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (sub / d).mkdir(parents=True)
    stems = []
    for img in coco["images"]:
        stem = Path(img["file_name"]).stem
        Image.open(tiny_root / "train" / img["file_name"]).convert("RGB").save(
            sub / "JPEGImages" / f"{stem}.jpg", quality=95)
        objects = "".join(
            f"<object><name>{names[a['category_id']]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{a['bbox'][0] + 1}</xmin><ymin>{a['bbox'][1] + 1}</ymin>"
            f"<xmax>{a['bbox'][0] + a['bbox'][2] + 1}</xmax>"
            f"<ymax>{a['bbox'][1] + a['bbox'][3] + 1}</ymax></bndbox></object>"
            for a in anns[img["id"]])
        (sub / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>{img['width']}</width><height>{img['height']}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
        stems.append(stem)
    (sub / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems) + "\n")
    return root


def diamond(bbox: list[float]) -> list[float]:
    """The polygon of the diamond inscribed in a COCO box ``x, y, w, h``."""
    x, y, w, h = bbox
    return [x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]


@pytest.fixture(scope="session")
def mask_ann(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Absolute path of an annotation file of the tiny set with (diamond) polygon masks."""
    coco = load_coco(tiny_root)
    for a in coco["annotations"]:
        a["segmentation"] = [diamond(a["bbox"])]
    path = tmp_path_factory.mktemp("masks") / "train_masks.json"
    path.write_text(json.dumps(coco))
    return str(path)


def image_counts(coco: dict[str, Any]) -> np.ndarray:
    """Images containing each class, by a plain loop over the json (the reference)."""
    cat_index = {c["id"]: i for i, c in enumerate(sorted(coco["categories"],
                                                         key=lambda c: c["id"]))}
    seen = {(a["image_id"], cat_index[a["category_id"]]) for a in coco["annotations"]}
    return np.array([sum(1 for _, c in seen if c == k) for k in range(len(cat_index))])


def loaded(dataset: Any, idx: int) -> dict[str, Any]:
    """Data info of ``idx`` after ``LoadImageFromFile`` and ``LoadAnnotations``."""
    results = copy.deepcopy(dataset.get_data_info(idx))
    for t in (TRANSFORMS.build(dict(type="LoadImageFromFile")),
              TRANSFORMS.build(dict(type="LoadAnnotations", with_bbox=True))):
        results = t(results)
    return results


@pytest.fixture(scope="module")
def coco_dataset(tiny_root: Path) -> Any:
    init_default_scope("mmdet")
    return DATASETS.build(coco_cfg(tiny_root))


# ---------------------------------------------------------------------------------------------
# Which classes, and the bank.


def test_paste_class_probs_against_a_loop() -> None:
    rng = np.random.default_rng(3)
    per_image = [list(rng.choice(6, rng.integers(0, 4), p=[.5, .2, .12, .1, .05, .03]))
                 for _ in range(200)]
    stats = ClassStats.from_image_labels(ImageLabels.from_lists(per_image, 6))
    freq = np.array([sum(c in labels for labels in per_image) / 200 for c in range(6)])
    for thr, power, classes in [(0.15, 1.0, None), (None, 0.5, None), (0.3, 0.0, [2, 4, 5]),
                                (None, 2.0, [0, 5])]:
        chosen = [c for c in range(6) if freq[c] > 0 and (thr is None or freq[c] <= thr)
                  and (classes is None or c in classes)]
        expected = np.zeros(6)
        for c in chosen:
            expected[c] = freq[c] ** -power
        np.testing.assert_allclose(paste_class_probs(stats, thr, power, classes),
                                   expected / expected.sum(), rtol=1e-12)


def test_bank_holds_the_annotated_pixels_of_chosen_classes(tiny_root: Path) -> None:
    coco = load_coco(tiny_root)
    freq = image_counts(coco) / len(coco["images"])
    t = RareClassCopyPaste(dataset=coco_cfg(tiny_root), freq_thr=0.25, power=1.0,
                           max_crops_per_class=3, seed=1)
    bank = t.bank
    chosen = np.flatnonzero(freq <= 0.25)
    assert set(bank.labels.tolist()) == set(chosen.tolist())
    np.testing.assert_allclose(bank.class_probs[chosen], (1 / freq[chosen]) /
                               (1 / freq[chosen]).sum())
    instances = np.bincount([a["category_id"] - 1 for a in coco["annotations"]], minlength=4)
    np.testing.assert_array_equal(np.bincount(bank.labels, minlength=4)[chosen],
                                  np.minimum(instances[chosen], 3))
    images = sorted(coco["images"], key=lambda i: i["id"])
    anns = defaultdict(list)
    for a in sorted(coco["annotations"], key=lambda a: a["id"]):
        anns[a["image_id"]].append(a)
    assert bank.masks is None
    for k in range(len(bank)):
        idx, j = bank.sources[k]
        info = images[idx]
        ann = anns[info["id"]][j]
        assert ann["category_id"] - 1 == bank.labels[k]
        rgb = np.asarray(Image.open(tiny_root / "train" / info["file_name"]).convert("RGB"))
        x, y, w, h = ann["bbox"]
        np.testing.assert_array_equal(bank.crop(k)[0], rgb[y:y + h, x:x + w, ::-1])


def test_bank_is_deterministic_and_bounded(tiny_root: Path) -> None:
    def bank(seed: int, **kw: Any) -> Any:
        return RareClassCopyPaste(dataset=coco_cfg(tiny_root), freq_thr=None,
                                  max_crops_per_class=4, seed=seed, **kw).bank

    a, b, c = bank(0), bank(0), bank(1)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.sources, b.sources)
    assert not np.array_equal(a.sources, c.sources)  # 40 instances of class 0, 4 drawn
    assert np.bincount(a.labels).max() == 4
    # Downscaled crops: the same instances, at most 8 pixels, their scale kept.
    small = bank(0, max_crop_side=8)
    np.testing.assert_array_equal(small.sources, a.sources)
    assert small.shapes.max() == 8 and small.nbytes <= len(small) * 8 * 8 * 3
    expected = np.minimum(1.0, 8 / a.shapes.max(1))
    np.testing.assert_allclose(small.scales, expected)
    np.testing.assert_array_equal(small.shapes,
                                  np.maximum(1, np.round(a.shapes * expected[:, None])))


def test_bank_crops_instance_masks_when_the_dataset_has_them(tiny_root: Path,
                                                             mask_ann: str) -> None:
    bank = RareClassCopyPaste(dataset=coco_cfg(tiny_root, ann=mask_ann), freq_thr=0.5,
                              max_crops_per_class=2).bank
    assert bank.masks is not None
    coco = json.loads(Path(mask_ann).read_text())
    images = sorted(coco["images"], key=lambda i: i["id"])
    anns = defaultdict(list)
    for a in sorted(coco["annotations"], key=lambda a: a["id"]):
        anns[a["image_id"]].append(a)
    for k in range(len(bank)):
        idx, j = bank.sources[k]
        info = images[idx]
        ann = anns[info["id"]][j]
        reference = Image.new("L", (info["width"], info["height"]))
        ImageDraw.Draw(reference).polygon(ann["segmentation"][0], fill=1)
        x, y, w, h = ann["bbox"]
        expected = np.asarray(reference, dtype=bool)[y:y + h, x:x + w]
        # pycocotools (mmdet) and PIL rasterise polygon edges differently: compare inside
        # the shape and well outside it.
        agree = bank.crop(k)[1] == expected
        assert agree.mean() > 0.85 and agree[h // 2, :].mean() > 0.85


# ---------------------------------------------------------------------------------------------
# The paste core, on constructed cases and against a per-pixel loop.


def rect_patch(x: int, y: int, h: int, w: int, label: int, value: int = 200) -> Patch:
    return Patch(np.full((h, w, 3), value, np.uint8), np.ones((h, w), np.float32), x, y, label)


def test_occlusion_constructed_case() -> None:
    img = np.zeros((40, 40, 3), np.uint8)
    boxes = np.array([[0, 0, 20, 20], [25, 25, 35, 35]], np.float32)
    labels = np.array([0, 1])
    covers_75 = rect_patch(0, 0, 15, 20, label=3)      # rows 0-14 of box 0: 75% of it
    corner = rect_patch(31, 31, 4, 4, label=2)          # a 16% corner of box 1
    out = paste_patches(img, boxes, labels, None, None, [covers_75, corner], occlusion_thr=0.7)
    assert out.kept.tolist() == [False, True]
    np.testing.assert_array_equal(out.boxes, [[25, 25, 35, 35], [0, 0, 20, 15], [31, 31, 35, 35]])
    assert out.labels.tolist() == [1, 3, 2] and out.num_pasted == 2
    assert out.ignore.tolist() == [False] * 3
    assert (out.img[:15, :20] == 200).all() and (out.img[15:, :31] == 0).all()
    # Above the threshold the object stays, and its box shrinks to the visible rows.
    out = paste_patches(img, boxes, labels, None, None, [covers_75], occlusion_thr=0.8)
    np.testing.assert_array_equal(out.boxes[:2], [[0, 15, 20, 20], [25, 25, 35, 35]])
    out = paste_patches(img, boxes, labels, None, None, [covers_75], occlusion_thr=0.8,
                        clip_boxes=False)
    np.testing.assert_array_equal(out.boxes[:2], boxes)
    # A later paste hides an earlier one completely.
    out = paste_patches(img, boxes, labels, None, None,
                        [rect_patch(2, 22, 5, 5, 2), rect_patch(0, 20, 10, 10, 3)])
    assert out.labels.tolist() == [0, 1, 3] and out.num_pasted == 1


def test_occlusion_of_masks() -> None:
    img = np.zeros((30, 30, 3), np.uint8)
    mask = np.zeros((1, 30, 30), np.uint8)
    mask[0, 5:15, 5:25] = 1                      # a 10 x 20 object in a larger box
    boxes = np.array([[2, 2, 28, 18]], np.float32)
    out = paste_patches(img, boxes, np.array([0]), None, mask, [rect_patch(0, 0, 30, 15, 1)])
    # Half of the mask is hidden: the mask loses it and the box becomes the rest's bbox.
    np.testing.assert_array_equal(out.masks[0], np.pad(np.ones((10, 10)), ((5, 15), (15, 5))))
    np.testing.assert_array_equal(out.boxes[0], [15, 5, 25, 15])
    np.testing.assert_array_equal(out.masks[1][:, :15], 1)
    # A masked patch: its box is its mask's, and only masked pixels change.
    alpha = np.zeros((10, 10), np.float32)
    alpha[2:6, 3:9] = 1
    patch = Patch(np.full((10, 10, 3), 9, np.uint8), alpha, 10, 10, 1, tight=True)
    out = paste_patches(img, np.zeros((0, 4)), np.zeros(0, int), None, None, [patch])
    np.testing.assert_array_equal(out.boxes, [[13, 12, 19, 16]])
    assert (out.img == 9).sum() == 4 * 6 * 3


def reference_paste(img: np.ndarray, boxes: np.ndarray, patches: list[Patch], thr: float
                    ) -> tuple[list[bool], list[list[float]], np.ndarray]:
    """Per-pixel loop: which layer shows at each pixel, then what each object keeps."""
    height, width = img.shape[:2]
    out = img.copy()
    top = [[-1] * width for _ in range(height)]
    for j, p in enumerate(patches):
        for r in range(p.alpha.shape[0]):
            for c in range(p.alpha.shape[1]):
                top[p.y + r][p.x + c] = j
                out[p.y + r, p.x + c] = p.pixels[r, c]
    objects = [(b, -1) for b in boxes.astype(int).tolist()]
    objects += [([p.x, p.y, p.x + p.alpha.shape[1], p.y + p.alpha.shape[0]], j)
                for j, p in enumerate(patches)]
    kept, new_boxes = [], []
    for (x0, y0, x1, y1), layer in objects:
        pixels = [(r, c) for r in range(y0, y1) for c in range(x0, x1)]
        visible = [(r, c) for r, c in pixels if top[r][c] <= layer]
        keep = 1 - len(visible) / len(pixels) <= thr
        kept.append(keep)
        if keep:
            rows, cols = [r for r, _ in visible], [c for _, c in visible]
            new_boxes.append([min(cols), min(rows), max(cols) + 1, max(rows) + 1])
    return kept, new_boxes, out


@pytest.mark.parametrize("seed", range(6))
def test_paste_matches_a_per_pixel_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = 24, 28
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    xy = rng.integers(0, 16, (5, 2))
    boxes = np.concatenate([xy, xy + rng.integers(3, 9, (5, 2))], axis=1).astype(np.float32)
    patches = []
    for _ in range(int(rng.integers(1, 4))):
        h, w = (int(v) for v in rng.integers(3, 12, 2))
        patches.append(Patch(rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
                             np.ones((h, w), np.float32), int(rng.integers(0, width - w + 1)),
                             int(rng.integers(0, height - h + 1)), int(rng.integers(4))))
    thr = float(rng.uniform(0.3, 0.9))
    out = paste_patches(img, boxes, np.zeros(5, int), None, None, patches, thr)
    kept, new_boxes, expected_img = reference_paste(img, boxes, patches, thr)
    assert out.kept.tolist() == kept[:5]
    np.testing.assert_array_equal(out.boxes, np.array(new_boxes, np.float32).reshape(-1, 4))
    np.testing.assert_array_equal(out.img, expected_img)
    assert out.num_pasted == sum(kept[5:])


def test_soft_blend_is_the_alpha_mix() -> None:
    alpha = soft_alpha(10, 20)
    assert alpha[5, 10] == 1 and np.isclose(alpha[0, 10], 1 / 3) and alpha.min() > 0
    img = np.full((12, 24, 3), 50, np.uint8)
    patch = Patch(np.full((10, 20, 3), 250, np.uint8), alpha, 2, 1, 0)
    out = paste_patches(img, np.zeros((0, 4)), np.zeros(0, int), None, None, [patch])
    # OpenCV's blendLinear divides by the weights' sum (+ 1e-5): at most 1 off the rounding.
    np.testing.assert_allclose(out.img[1:11, 2:22, 0], np.rint(50 + 200 * alpha), atol=1)
    assert (out.img[0] == 50).all() and (out.img[:, :2] == 50).all()
    as_float = paste_patches(img.astype(np.float64), np.zeros((0, 4)), np.zeros(0, int), None,
                             None, [patch]).img
    np.testing.assert_allclose(as_float[1:11, 2:22, 0], 50 + 200 * alpha, rtol=1e-6)
    np.testing.assert_array_equal(out.boxes, [[2, 1, 22, 11]])


# ---------------------------------------------------------------------------------------------
# The transform on loaded images.


def test_pasted_objects_lie_inside_with_chosen_labels(tiny_root: Path, coco_dataset: Any
                                                       ) -> None:
    t = RareClassCopyPaste(dataset=coco_cfg(tiny_root), freq_thr=0.25, num_objects=(1, 3),
                           scale_range=(1.0, 1.0), flip_prob=0.0, blend="rect",
                           occlusion_thr=1.0, clip_boxes=False, seed=5)
    chosen = set(np.flatnonzero(t.bank.class_probs > 0).tolist())
    crops = defaultdict(list)
    for k in range(len(t.bank)):
        crops[int(t.bank.labels[k])].append(t.bank.crop(k)[0])
    ks = []
    for idx in range(len(coco_dataset)):
        before = loaded(coco_dataset, idx)
        n = len(before["gt_bboxes_labels"])
        old_boxes = before["gt_bboxes"].numpy().copy()
        out = t(before)
        boxes, labels = out["gt_bboxes"].numpy(), out["gt_bboxes_labels"]
        k = out["num_pasted"]
        ks.append(k)
        assert isinstance(out["gt_bboxes"], HorizontalBoxes)
        assert len(boxes) == len(labels) == len(out["gt_ignore_flags"]) == n + k
        np.testing.assert_array_equal(boxes[:n], old_boxes)
        assert set(labels[n:].tolist()) <= chosen
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
        # The last paste lies on top of everything: its box shows one of its class's crops.
        x0, y0, x1, y1 = boxes[-1].astype(int)
        region = out["img"][y0:y1, x0:x1]
        assert any(np.array_equal(region, crop) for crop in crops[int(labels[-1])])
    assert set(ks) == {1, 2, 3}


def test_same_seed_same_paste_and_prob_zero_is_identity(tiny_root: Path, coco_dataset: Any
                                                        ) -> None:
    def run(seed: int, **kw: Any) -> list[np.ndarray]:
        t = RareClassCopyPaste(dataset=coco_cfg(tiny_root), freq_thr=0.5, seed=seed, **kw)
        return [t(loaded(coco_dataset, i))["img"] for i in range(6)]

    a, b, c = run(0), run(0), run(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    untouched = run(0, prob=0.0)
    assert all(np.array_equal(x, loaded(coco_dataset, i)["img"]) for i, x in enumerate(untouched))


def test_masks_stay_consistent_with_boxes(tiny_root: Path, mask_ann: str) -> None:
    cfg = coco_cfg(tiny_root, ann=mask_ann)
    dataset = DATASETS.build(cfg)
    t = RareClassCopyPaste(dataset=cfg, freq_thr=0.5, num_objects=3, occlusion_thr=0.9, seed=2)
    load_masks = TRANSFORMS.build(dict(type="LoadAnnotations", with_bbox=True, with_mask=True))
    for idx in range(8):
        results = load_masks(TRANSFORMS.build(dict(type="LoadImageFromFile"))(
            copy.deepcopy(dataset.get_data_info(idx))))
        out = t(results)
        masks, boxes = out["gt_masks"], out["gt_bboxes"].numpy()
        assert isinstance(masks, BitmapMasks) and len(masks) == len(boxes)
        n = len(boxes) - out["num_pasted"]
        for m, box in zip(masks.masks[n:], boxes[n:], strict=True):   # pasted: box = mask bbox
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        for m, box in zip(masks.masks, boxes, strict=True):   # every mask lies in its box
            ys, xs = np.nonzero(m)
            assert len(ys) and xs.min() >= np.floor(box[0]) and xs.max() < np.ceil(box[2])


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_objects=-1), "num_objects"),
    (dict(num_objects=(3, 1)), "num_objects"),
    (dict(prob=1.5), "prob"),
    (dict(flip_prob=-0.1), "flip_prob"),
    (dict(occlusion_thr=2), "occlusion_thr"),
    (dict(scale_range=(0, 1)), "scale_range"),
    (dict(freq_thr=0), "freq_thr"),
    (dict(power=-1), "power"),
    (dict(blend="feather"), "blend"),
    (dict(max_crops_per_class=0), "max_crops_per_class"),
    (dict(classes="striped_square"), "classes"),
    (dict(dataset=None), "dataset"),
])
def test_copy_paste_invalid_arguments(kwargs: dict[str, Any], name: str) -> None:
    args = {"dataset": dict(type="CocoDataset"), **kwargs}
    with pytest.raises(ValueError, match=name):
        RareClassCopyPaste(**args)


@pytest.mark.parametrize("kwargs, name", [
    (dict(classes=["striped_sqaure"]), "classes"),
    (dict(freq_thr=0.01), "freq_thr"),
    (dict(freq_thr=0.5, min_crop_size=1000), "min_crop_size"),
    (dict(freq_thr=0.5, use_masks=True), "use_masks"),
])
def test_copy_paste_unknown_classes_and_empty_bank(tiny_root: Path, kwargs: dict[str, Any],
                                                   name: str) -> None:
    t = RareClassCopyPaste(dataset=coco_cfg(tiny_root), **kwargs)
    with pytest.raises(ValueError, match=name):
        t.full_init()


def test_copy_paste_needs_loaded_annotations(tiny_root: Path) -> None:
    t = RareClassCopyPaste(dataset=coco_cfg(tiny_root))
    with pytest.raises(ValueError, match="after LoadAnnotations"):
        t({"img": np.zeros((8, 8, 3), np.uint8)})


# ---------------------------------------------------------------------------------------------
# RarityConditionedApply.

#: Image counts 100 / 40 / 5 / 0 of 200 images: frequent, common, rare, unseen (10 / 50).
STATS = ClassStats(instance_counts=np.array([150, 60, 5, 0]), image_counts=np.array(
    [100, 40, 5, 0]), num_images=200, num_empty_images=20)


def test_class_apply_probs_by_hand() -> None:
    np.testing.assert_array_equal(
        class_apply_probs(STATS, "group", (0.9, 0.4, 0.1), rare_max=10, common_max=50),
        [0.1, 0.4, 0.9, 0.9])
    # p = min(1, a (t / f) ** q), f = 0.5, 0.2, 0.025; unseen classes get 1.
    np.testing.assert_allclose(
        class_apply_probs(STATS, "power", freq_thr=0.1, scale=0.5, power=0.5),
        [0.5 * (0.1 / 0.5) ** 0.5, 0.5 * (0.1 / 0.2) ** 0.5, 1.0, 1.0])
    np.testing.assert_allclose(
        class_apply_probs(STATS, "power", freq_thr=0.1, scale=0.2, power=1.0, by="instance"),
        [0.2 * 0.1 / (150 / 215), 0.2 * 0.1 / (60 / 215), 0.2 * 0.1 / (5 / 215), 1.0])


def invert_apply(**kw: Any) -> RarityConditionedApply:
    args: dict[str, Any] = dict(transforms=[dict(type="MmimbTestInvert")], class_stats=STATS,
                                rare_max=10, common_max=50)
    return RarityConditionedApply(**{**args, **kw})


def boxes_of(labels: list[int], ignore: list[bool] | None = None) -> dict[str, Any]:
    n = len(labels)
    return {"img": np.full((4, 4, 3), 7, np.uint8),
            "gt_bboxes": HorizontalBoxes(np.tile([0, 0, 2, 2], (n, 1)).astype(np.float32)),
            "gt_bboxes_labels": np.array(labels, np.int64),
            "gt_ignore_flags": np.array(ignore or [False] * n)}


def test_rarest_class_sets_the_probability() -> None:
    t = invert_apply(group_probs=(1.0, 0.5, 0.0), empty_prob=0.25, seed=4)
    assert t.image_prob(np.array([0, 0])) == 0.0
    assert t.image_prob(np.array([0, 1])) == 0.5
    assert t.image_prob(np.array([0, 1, 2])) == 1.0
    assert t.image_prob(np.array([], np.int64)) == 0.25
    draws = 2000
    for labels, ignore, p in [([0, 0], None, 0.0), ([0, 2], None, 1.0), ([1, 0], None, 0.5),
                              ([0, 2], [False, True], 0.0), ([], None, 0.25)]:
        applied = 0
        for _ in range(draws):
            out = t(boxes_of(labels, ignore))
            inverted = bool((out["img"] == 248).all())
            assert inverted == out["rarity_applied"] and out["rarity_prob"] == p
            applied += inverted
            if p == 0.0:   # left alone: nothing but the two added keys changes
                assert (out["img"] == 7).all() and out["gt_bboxes_labels"].tolist() == labels
        tolerance = 5 * np.sqrt(p * (1 - p) / draws)
        assert abs(applied / draws - p) <= tolerance


def test_rarity_apply_reads_instances_before_load_annotations_and_propagates_drops() -> None:
    t = invert_apply(group_probs=(1.0, 0.0, 0.0))
    info = {"img": np.zeros((2, 2, 3), np.uint8),
            "instances": [{"bbox_label": 2, "ignore_flag": 0}, {"bbox_label": 0,
                                                                 "ignore_flag": 0}]}
    assert t(info)["rarity_applied"] and (info["img"] == 255).all()
    drop = RarityConditionedApply([dict(type="MmimbTestDrop")], class_stats=STATS.to_dict(),
                                  rare_max=10, common_max=50)
    assert drop(boxes_of([2])) is None and drop(boxes_of([0])) is not None


def test_rarity_apply_same_seed_same_coins() -> None:
    def coins(seed: int) -> list[bool]:
        t = invert_apply(group_probs=(0.5, 0.5, 0.5), seed=seed)
        return [t(boxes_of([1]))["rarity_applied"] for _ in range(64)]

    assert coins(3) == coins(3) and coins(3) != coins(4)


@pytest.mark.parametrize("kwargs, name", [
    (dict(transforms=[]), "transforms"),
    (dict(group_probs=(1.2, 0.5, 0.0)), "group_probs"),
    (dict(group_probs=(1.0, 0.5)), "group_probs"),
    (dict(empty_prob=-0.5), "empty_prob"),
    (dict(mapping="linear"), "mapping"),
    (dict(freq_thr=1.5, mapping="power"), "freq_thr"),
    (dict(scale=-1.0), "scale"),
    (dict(rare_max=20, common_max=10), "common_max"),
    (dict(by="box"), "by"),
    (dict(class_stats=None), "class_stats"),
    (dict(dataset=dict(type="CocoDataset")), "class_stats"),
    (dict(class_stats={"image_counts": [1, 2]}), "class_stats"),
])
def test_rarity_apply_invalid_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        invert_apply(**kwargs)


# ---------------------------------------------------------------------------------------------
# Inside real pipelines.

BEFORE = "before Resize/RandomFlip"
AFTER = "after Resize/RandomFlip"


def pipeline(position: str, transform: dict[str, Any], load: bool = True) -> list[dict]:
    head = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True)]
    middle = [dict(type="Resize", scale=(96, 96), keep_ratio=True),
              dict(type="RandomFlip", prob=0.5)]
    keys = ("img_id", "img_shape", "scale_factor", "flip", "num_pasted", "rarity_prob",
            "rarity_applied")
    body = [transform, *middle] if position == BEFORE else [*middle, transform]
    return (head if load else []) + body + [dict(type="PackDetInputs", meta_keys=keys)]


def run_seeded(dataset: Any, idx: int) -> dict[str, Any]:
    """``dataset[idx]`` with numpy and random seeded by ``idx`` (fixes mmdet's flips)."""
    np.random.seed(idx)
    random.seed(idx)
    return dataset[idx]


@pytest.mark.parametrize("kind", ["coco", "voc"])
@pytest.mark.parametrize("position", [BEFORE, AFTER])
def test_copy_paste_in_a_training_pipeline(kind: str, position: str, tiny_root: Path,
                                           voc_root: Path) -> None:
    cfg = coco_cfg(tiny_root) if kind == "coco" else voc_cfg(voc_root)
    paste = dict(type="RareClassCopyPaste", dataset=cfg, freq_thr=0.5, num_objects=2,
                 scale_range=(1.0, 1.0), flip_prob=0.0, blend="rect", occlusion_thr=1.0,
                 clip_boxes=False, seed=0)
    dataset = DATASETS.build(dict(cfg, pipeline=pipeline(position, paste)))
    baseline = DATASETS.build(dict(cfg, pipeline=pipeline(position, dict(type="MmimbTestNoOp"))))
    bank = dataset.pipeline.transforms[2 if position == BEFORE else 4].bank
    crop_sizes = {(int(c), round(w * 1.5), round(h * 1.5))
                  for c, (h, w) in zip(bank.labels, bank.shapes, strict=True)}
    for idx in range(0, len(dataset), 3):
        out, base = run_seeded(dataset, idx), run_seeded(baseline, idx)
        gt, base_gt = out["data_samples"].gt_instances, base["data_samples"].gt_instances
        n = len(base_gt)
        assert out["data_samples"].num_pasted == 2 and len(gt) == n + 2
        assert out["inputs"].shape == base["inputs"].shape
        torch.testing.assert_close(gt.bboxes.tensor[:n], base_gt.bboxes.tensor)
        assert gt.labels[:n].tolist() == base_gt.labels.tolist()
        boxes = gt.bboxes.tensor.numpy()
        assert (boxes >= 0).all() and (boxes <= 96).all()   # the image is 96 x 96
        for (x0, y0, x1, y1), c in zip(boxes[n:], gt.labels[n:].tolist(), strict=True):
            assert any(abs(x1 - x0 - w) <= 1 and abs(y1 - y0 - h) <= 1
                       for cc, w, h in crop_sizes if cc == c), "pasted at the wrong scale"


@TRANSFORMS.register_module(name="MmimbTestNoOp", force=True)
class NoOp:
    def __call__(self, results: dict) -> dict:
        return results


@pytest.mark.parametrize("kind", ["coco", "voc"])
@pytest.mark.parametrize("position", [BEFORE, AFTER])
def test_rarity_apply_in_a_training_pipeline(kind: str, position: str, tiny_root: Path,
                                             voc_root: Path) -> None:
    cfg = coco_cfg(tiny_root) if kind == "coco" else voc_cfg(voc_root)
    # TINY's image counts are 24 / 9 / 6 / 4: frequent, common, rare, rare.
    apply = dict(type="RarityConditionedApply", dataset=cfg, rare_max=6, common_max=10,
                 group_probs=(1.0, 0.5, 0.0), transforms=[dict(type="MmimbTestInvert")])
    dataset = DATASETS.build(dict(cfg, pipeline=pipeline(position, apply)))
    baseline = DATASETS.build(dict(cfg, pipeline=pipeline(position, dict(type="MmimbTestNoOp"))))
    expected_p = {0: 0.0, 1: 0.5, 2: 1.0, 3: 1.0}
    applied = []
    for idx in range(len(dataset)):
        out, base = run_seeded(dataset, idx), run_seeded(baseline, idx)
        labels = base["data_samples"].gt_instances.labels.tolist()
        rarest = max(labels, default=None)   # class index order is frequency order here
        p = 0.0 if rarest is None else expected_p[rarest]
        meta = out["data_samples"]
        assert meta.rarity_prob == p
        if p in (0.0, 1.0):
            assert meta.rarity_applied == (p == 1.0)
        expected = 255 - base["inputs"] if meta.rarity_applied else base["inputs"]
        torch.testing.assert_close(out["inputs"], expected, atol=1, rtol=0)
        torch.testing.assert_close(out["data_samples"].gt_instances.bboxes.tensor,
                                   base["data_samples"].gt_instances.bboxes.tensor)
        applied.append(meta.rarity_applied)
    assert any(applied) and not all(applied)


def test_both_compose_with_multi_image_mix_dataset(tiny_root: Path) -> None:
    cfg = coco_cfg(tiny_root)
    inner = dict(cfg, pipeline=[dict(type="LoadImageFromFile"),
                                dict(type="LoadAnnotations", with_bbox=True)])

    def mix(*transforms: dict[str, Any]) -> MultiImageMixDataset:
        return MultiImageMixDataset(dataset=inner, pipeline=[
            dict(type="Mosaic", img_scale=(64, 64), prob=1.0), *transforms,
            dict(type="PackDetInputs", meta_keys=("img_id", "num_pasted", "rarity_applied"))])

    ours = mix(dict(type="RareClassCopyPaste", dataset=cfg, freq_thr=0.5, num_objects=(1, 2),
                    occlusion_thr=1.0, clip_boxes=False),
               dict(type="RarityConditionedApply", dataset=cfg, rare_max=6, common_max=10,
                    transforms=[dict(type="MmimbTestInvert")]))
    plain = mix()
    for idx in range(6):
        out, base = run_seeded(ours, idx), run_seeded(plain, idx)
        gt, base_gt = out["data_samples"].gt_instances, base["data_samples"].gt_instances
        k = out["data_samples"].num_pasted
        assert k in (1, 2) and len(gt) == len(base_gt) + k
        assert out["inputs"].shape == (3, 128, 128)
        torch.testing.assert_close(gt.bboxes.tensor[:len(base_gt)], base_gt.bboxes.tensor)
        assert (gt.bboxes.tensor >= 0).all() and (gt.bboxes.tensor <= 128).all()


# ---------------------------------------------------------------------------------------------
# Determinism through a 2-worker DataLoader.


def load_all(dataset: Any, seed: int | None) -> list[tuple[bytes, list, list]]:
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=pseudo_collate,
                        worker_init_fn=partial(worker_init_fn, num_workers=2, rank=0, seed=0))
    if seed is not None:
        torch.manual_seed(seed)   # what mmengine's randomness.seed does before training
    out = []
    for batch in loader:
        for inputs, sample in zip(batch["inputs"], batch["data_samples"], strict=True):
            out.append((inputs.numpy().tobytes(), sample.gt_instances.bboxes.tensor.tolist(),
                        sample.gt_instances.labels.tolist()))
    return out


def test_two_workers_reproduce_given_the_seed(tiny_root: Path) -> None:
    cfg = coco_cfg(tiny_root)

    def dataset(seed: int) -> Any:
        return DATASETS.build(dict(cfg, pipeline=[
            dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
            dict(type="RareClassCopyPaste", dataset=cfg, freq_thr=0.5, prob=0.7, seed=seed),
            dict(type="RarityConditionedApply", dataset=cfg, rare_max=6, common_max=10,
                 group_probs=(0.8, 0.4, 0.1), seed=seed,
                 transforms=[dict(type="PhotoMetricDistortion")]),
            dict(type="RandomFlip", prob=0.5), dict(type="PackDetInputs")]))

    ds = dataset(0)
    first = load_all(ds, seed=0)
    assert load_all(dataset(0), seed=0) == first
    assert load_all(ds, seed=0) == first
    assert load_all(ds, seed=1) != first                   # another run seed
    assert load_all(dataset(1), seed=0) != first           # another transform seed
    pasted = sum(len(b) for _, b, _ in first) - sum(
        len(ds.get_data_info(i)["instances"]) for i in range(len(ds)))
    assert pasted > 0


# ---------------------------------------------------------------------------------------------
# Training through the mmengine Runner with the repository's experiment configs.

EXPERIMENTS = ["retinanet/rarecopypaste_retinanet_r18tiny_fpn_2k_ltsynth.py",
               "retinanet/rarityaug_retinanet_r18tiny_fpn_2k_ltsynth.py",
               "faster_rcnn/rarecopypaste_faster-rcnn_r18tiny_fpn_1k_ltsynth.py",
               "faster_rcnn/rarityaug_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"]


def tiny_experiment(name: str, data_root: Path, work_dir: Path, max_iters: int = 2) -> Config:
    """A repository config pointed at the tiny data (the transforms' ``dataset`` included),
    with ``max_iters`` iterations, no validation and no checkpoint."""
    cfg = Config.fromfile(str(REPO / "configs" / name))
    train = cfg.train_dataloader.dataset
    train.data_root = f"{data_root}/"
    train.synthetic = asdict(TINY)
    train.serialize_data = False   # its gc.collect() costs a second in a test process
    for t in train.pipeline:
        if "dataset" in t:
            t.dataset = copy.deepcopy(train.to_dict() if hasattr(train, "to_dict") else train)
            t.dataset["pipeline"] = []
        if t.type == "PackDetInputs":
            t.meta_keys = ("img_id", "img_shape", "scale_factor", "flip", "flip_direction",
                           "num_pasted", "rarity_prob", "rarity_applied")
    head = cfg.model.roi_head.bbox_head if "roi_head" in cfg.model else cfg.model.bbox_head
    head.num_classes = TINY.num_classes
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=10 ** 6)
    cfg.param_scheduler = None
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg",
                "test_evaluator"):
        cfg[key] = None
    cfg.default_hooks.checkpoint = None
    cfg.work_dir = str(work_dir)
    cfg.log_level = "WARNING"
    return cfg


class RecordBatches(Hook):
    """Keeps the data samples and losses of every training iteration."""

    def __init__(self) -> None:
        self.samples: list[Any] = []
        self.losses: list[float] = []

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        self.samples.extend(data_batch["data_samples"])
        self.losses.append(float(outputs["loss"]))


def train_and_record(cfg: Config) -> tuple[Runner, RecordBatches]:
    """Train ``cfg`` through the runner; check that the losses are finite and weights moved."""
    runner = Runner.from_cfg(cfg)
    recorder = RecordBatches()
    runner.register_hook(recorder)
    before = [p.detach().clone() for p in runner.model.parameters()]
    runner.train()
    assert len(recorder.losses) == 2 and all(np.isfinite(recorder.losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, runner.model.parameters(),
                                                     strict=True))
    return runner, recorder


def set_transform_args(cfg: Config, type_name: str, **kwargs: Any) -> None:
    for t in cfg.train_dataloader.dataset.pipeline:
        if t.type == type_name:
            t.update(kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", [EXPERIMENTS[0], EXPERIMENTS[3]])
def test_runner_trains_with_each_transform(name: str, tiny_root: Path, tmp_path: Path) -> None:
    coco = load_coco(tiny_root)
    counts = defaultdict(list)
    for a in coco["annotations"]:
        counts[a["image_id"]].append(a["category_id"] - 1)
    cfg = tiny_experiment(name, tiny_root, tmp_path / "work")
    # Tiny-set thresholds (image counts 24 / 9 / 6 / 4); no removal, so box counts are exact.
    set_transform_args(cfg, "RareClassCopyPaste", prob=1.0, occlusion_thr=1.0)
    set_transform_args(cfg, "RarityConditionedApply", rare_max=6, common_max=10)
    runner, recorder = train_and_record(cfg)
    expected_p = {0: 0.0, 1: 0.5, 2: 1.0, 3: 1.0}
    for sample in recorder.samples:
        labels = sample.gt_instances.labels.tolist()
        original = counts[sample.img_id]
        if "copypaste" in name:
            assert len(labels) == len(original) + sample.num_pasted and sample.num_pasted >= 1
        else:
            p = expected_p[max(original)] if original else 0.0
            assert sample.rarity_prob == p and (sample.rarity_applied or p < 1)
            assert not (sample.rarity_applied and p == 0)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_config_differs_from_its_baseline_only_in_the_pipeline(name: str) -> None:
    cfg = Config.fromfile(str(REPO / "configs" / name)).to_dict()
    path = Path(name)
    base = Config.fromfile(str(REPO / "configs" / path.parent / path.name.split("_", 1)[1]))
    base = base.to_dict()
    pipe, base_pipe = (c["train_dataloader"]["dataset"].pop("pipeline") for c in (cfg, base))
    for c in (cfg, base):
        c.pop("train_pipeline")
    assert cfg == base
    ours = [t for t in pipe if t not in base_pipe]
    assert len(ours) == 1 and ours[0]["type"] in ("RareClassCopyPaste", "RarityConditionedApply")
    assert [t for t in pipe if t is not ours[0]] == base_pipe
    # The transform reads the baseline's training set.
    dataset = {k: v for k, v in ours[0]["dataset"].items() if k != "pipeline"}
    assert dataset == base["train_dataloader"]["dataset"]


def test_registered_names_are_not_mmdets() -> None:
    for name in ("RareClassCopyPaste", "RarityConditionedApply"):
        assert TRANSFORMS.get(name).__module__.startswith("mmimb.transforms")
    assert TRANSFORMS.get("CopyPaste").__module__.startswith("mmdet.")


