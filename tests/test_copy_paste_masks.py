"""Mask pasting, instance mixing and bad input of RareClassCopyPaste, on data with masks.

References: :func:`mix_crops` against a per-pixel loop; pasted masks against the bank's crops
and pycocotools' decoding of the generated RLE; mmdet's ``PolygonMasks`` rasterisation for
polygon targets; PIL's conversion for grayscale and RGBA source files. The masked data are the
tiny synthetic set generated with ``with_masks=True`` into a temporary folder.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from mmdet.registry import DATASETS, TRANSFORMS
from mmdet.structures.bbox import HorizontalBoxes
from mmdet.structures.mask import BitmapMasks, PolygonMasks
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from mmimb.datasets.synthetic import class_names, generate
from mmimb.transforms import RareClassCopyPaste, paste_patches
from mmimb.transforms.copy_paste import Patch
from mmimb.transforms.crop_bank import build_crop_bank, mix_crops
from tests.conftest import REPO, TINY
from tests.test_transforms import tiny_experiment, train_and_record

TINY_MASKS = replace(TINY, with_masks=True)
CLASSES = class_names(TINY.num_classes)
MASK_CONFIG = "faster_rcnn/maskpaste_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"


@pytest.fixture(autouse=True)
def _mmdet_scope() -> None:
    init_default_scope("mmdet")


@pytest.fixture(scope="module")
def mask_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth_masks") / "tiny", TINY_MASKS)


@pytest.fixture(scope="module")
def coco_dataset(tiny_root: Path) -> Any:
    init_default_scope("mmdet")
    return DATASETS.build(dict(type="CocoDataset", data_root=f"{tiny_root}/",
                               ann_file="annotations/train.json", data_prefix=dict(img="train/"),
                               metainfo=dict(classes=CLASSES),
                               filter_cfg=dict(filter_empty_gt=False), pipeline=[]))


def synth_cfg(root: Path, with_masks: bool = True) -> dict[str, Any]:
    return dict(type="SyntheticLongTailDataset", data_root=f"{root}/",
                synthetic=asdict(replace(TINY, with_masks=with_masks)),
                filter_cfg=dict(filter_empty_gt=False), pipeline=[])


def loaded(dataset: Any, idx: int, with_mask: bool = True) -> dict[str, Any]:
    results = copy.deepcopy(dataset.get_data_info(idx))
    for t in (dict(type="LoadImageFromFile"),
              dict(type="LoadAnnotations", with_bbox=True, with_mask=with_mask)):
        results = TRANSFORMS.build(t)(results)
    return results


def bbox_of(mask: np.ndarray, x: int = 0, y: int = 0) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1]


# ---------------------------------------------------------------------------------------------
# Instance mixing: the pure function.


def reference_mix(a: np.ndarray, ma: np.ndarray | None, b: np.ndarray, mb: np.ndarray | None,
                  lam: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-pixel loop; ``b`` resized with OpenCV directly (bilinear, nearest for the mask)."""
    h, w = a.shape[:2]
    b = cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR)
    if mb is not None:
        mb = cv2.resize(mb.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    out = np.zeros_like(a)
    for r in range(h):
        for c in range(w):
            pa, pb = a[r, c].astype(float), b[r, c].astype(float)
            if ma is None or mb is None or (ma[r, c] and mb[r, c]):
                out[r, c] = np.rint(lam * pa + (1 - lam) * pb)
            else:
                out[r, c] = pb if mb[r, c] else pa
    return out, None if ma is None or mb is None else ma | mb


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_masks", [False, True])
def test_mix_crops_matches_a_per_pixel_loop(seed: int, with_masks: bool) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (int(rng.integers(5, 20)), int(rng.integers(5, 20)), 3),
                     dtype=np.uint8)
    ma = rng.random(a.shape[:2]) < 0.6 if with_masks else None
    mb = rng.random(b.shape[:2]) < 0.6 if with_masks else None
    lam = float(rng.uniform(0.1, 0.9))
    pixels, mask = mix_crops(a, ma, b, mb, lam)
    ref_pixels, ref_mask = reference_mix(a, ma, b, mb, lam)
    np.testing.assert_array_equal(pixels, ref_pixels)
    if with_masks:
        np.testing.assert_array_equal(mask, ref_mask)
    else:
        assert mask is None
    # Identities: weight 1 is the first crop (over its own mask), weight 0 the resized second.
    np.testing.assert_array_equal(mix_crops(a, ma, b, mb, 1.0)[0][ma if with_masks else ...],
                                  a[ma if with_masks else ...])
    if not with_masks:
        np.testing.assert_array_equal(mix_crops(a, None, b, None, 0.0)[0],
                                      cv2.resize(b, (13, 9), interpolation=cv2.INTER_LINEAR))


def test_mix_crops_invalid_arguments() -> None:
    a, m = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="weight"):
        mix_crops(a, None, a, None, 1.5)
    with pytest.raises(ValueError, match="masks"):
        mix_crops(a, m, a, None, 0.5)


# ---------------------------------------------------------------------------------------------
# blend='mask' on the synthetic set with masks.


def test_mask_paste_changes_only_the_object_pixels(mask_root: Path) -> None:
    cfg = synth_cfg(mask_root)
    dataset = DATASETS.build(cfg)
    common = dict(dataset=cfg, freq_thr=0.5, num_objects=1, scale_range=(1.0, 1.0),
                  flip_prob=0.0, occlusion_thr=1.0, clip_boxes=False, seed=3)
    masked = RareClassCopyPaste(blend="mask", **common)
    rect = RareClassCopyPaste(blend="rect", use_masks=False, **common)
    assert masked.bank.masks is not None and rect.bank.masks is None
    for idx in range(6):
        before = loaded(dataset, idx)
        out = masked(copy.deepcopy(before))
        n = len(before["gt_bboxes_labels"])
        assert out["num_pasted"] == 1 and len(out["gt_masks"]) == n + 1
        pasted = out["gt_masks"].masks[-1].astype(bool)
        box = out["gt_bboxes"].numpy()[-1]
        np.testing.assert_array_equal(box, bbox_of(pasted))            # box = mask's bbox
        changed = (out["img"] != before["img"]).any(-1)
        assert not (changed & ~pasted).any()                            # nothing else changes
        # The pasted pixels are one of the class's crops, through its mask.
        x0, y0, x1, y1 = box.astype(int)
        region, region_mask = out["img"][y0:y1, x0:x1], pasted[y0:y1, x0:x1]
        label = int(out["gt_bboxes_labels"][-1])
        assert any(np.array_equal(region_mask, mk) and np.array_equal(region[mk], px[mk])
                   for px, mk in (masked.bank.crop(k) for k in masked.bank.by_class[label]))
        # The same draw as a rectangle covers the crop's whole box: strictly more pixels.
        as_rect = rect(copy.deepcopy(before))
        rect_changed = (as_rect["img"] != before["img"]).any(-1)
        assert rect_changed.sum() >= changed.sum()


def test_keep_masks_false_pastes_the_same_and_drops_the_masks(mask_root: Path) -> None:
    cfg = synth_cfg(mask_root)
    dataset = DATASETS.build(cfg)
    common = dict(dataset=cfg, freq_thr=0.5, num_objects=(1, 2), prob=0.5, blend="mask", seed=5)
    kept, dropped = RareClassCopyPaste(**common), RareClassCopyPaste(keep_masks=False, **common)
    pasted = 0
    for idx in range(8):  # pasted and unpasted images alike (prob 0.5)
        before = loaded(dataset, idx)
        a, b = kept(copy.deepcopy(before)), dropped(copy.deepcopy(before))
        assert "gt_masks" in a and "gt_masks" not in b
        np.testing.assert_array_equal(a["img"], b["img"])
        np.testing.assert_array_equal(a["gt_bboxes"].numpy(), b["gt_bboxes"].numpy())
        np.testing.assert_array_equal(a["gt_bboxes_labels"], b["gt_bboxes_labels"])
        pasted += b["num_pasted"] > 0
    assert 0 < pasted < 8
    with pytest.raises(TypeError, match="keep_masks must be True or False"):
        RareClassCopyPaste(dataset=cfg, keep_masks="no")  # type: ignore[arg-type]


def test_polygon_targets_lose_the_hidden_pixels(mask_root: Path) -> None:
    t = RareClassCopyPaste(dataset=synth_cfg(mask_root), blend="mask", freq_thr=0.5,
                           num_objects=3, scale_range=(1.5, 1.5), occlusion_thr=1.0, seed=1)
    polygon = [np.array([10, 10, 50, 10, 50, 50, 10, 50], dtype=np.float64)]   # a 40 x 40 square
    target = PolygonMasks([polygon], 64, 64)
    for _ in range(5):
        out = t({"img": np.zeros((64, 64, 3), np.uint8),
                 "gt_bboxes": HorizontalBoxes(np.array([[10, 10, 50, 50]], np.float32)),
                 "gt_bboxes_labels": np.array([0]), "gt_masks": target})
        masks = out["gt_masks"]
        assert isinstance(masks, BitmapMasks) and len(masks) == 1 + out["num_pasted"]
        covered = masks.masks[1:].any(0) if out["num_pasted"] else np.zeros((64, 64), bool)
        # Every pasted mask hides what it covers in the paste order: the original keeps the
        # rasterised polygon minus the union of the pasted masks.
        expected = target.to_ndarray()[0].astype(bool) & ~covered
        np.testing.assert_array_equal(masks.masks[0].astype(bool), expected)


# ---------------------------------------------------------------------------------------------
# Instance mixing inside the transform.


def test_mixed_instances_keep_the_label_and_the_documented_box(mask_root: Path) -> None:
    cfg = synth_cfg(mask_root)
    # Two crops per class: a mixed instance is mix_crops of them, in one order or the other.
    kw = dict(dataset=cfg, freq_thr=1.0, num_objects=(1, 3), scale_range=(1.0, 1.0),
              flip_prob=0.0, max_crops_per_class=2, mix_prob=1.0, mix_range=(0.25, 0.75),
              seed=4)
    for blend, use_masks in (("mask", "auto"), ("rect", False)):
        t = RareClassCopyPaste(blend=blend, use_masks=use_masks, **kw)
        bank = t.bank
        rng = np.random.default_rng(0)
        for _ in range(20):
            for p in t.draw_patches(rng, 64, 64):
                assert p.mix_weight is not None and 0.25 <= p.mix_weight <= 0.75
                k1, k2 = bank.by_class[p.label]
                assert bank.labels[k1] == bank.labels[k2] == p.label        # label kept
                options = [mix_crops(*bank.crop(i), *bank.crop(j), p.mix_weight)
                           for i, j in ((k1, k2), (k2, k1))]
                match = [(px, mk) for px, mk in options if np.array_equal(px, p.pixels)]
                assert match, "not a mix of the class's two crops"
                _, mixed_mask = match[0]
                out = paste_patches(np.zeros((64, 64, 3), np.uint8), np.zeros((0, 4)),
                                    np.zeros(0, int), None, None, [p])
                h, w = p.pixels.shape[:2]
                if blend == "mask":   # box: the bounding box of the union of both masks
                    np.testing.assert_array_equal(p.alpha, mixed_mask)
                    np.testing.assert_array_equal(out.boxes[0], bbox_of(mixed_mask, p.x, p.y))
                else:                 # box: the first crop's paste box, the whole patch
                    assert (h, w) in {tuple(bank.shapes[k1]), tuple(bank.shapes[k2])}
                    np.testing.assert_array_equal(out.boxes[0], [p.x, p.y, p.x + w, p.y + h])


def test_mix_probability_and_weights_follow_their_distributions(mask_root: Path) -> None:
    t = RareClassCopyPaste(dataset=synth_cfg(mask_root), freq_thr=1.0, num_objects=4,
                           mix_prob=0.3, mix_range=(0.2, 0.6), seed=0)
    rng = np.random.default_rng(1)
    patches = [p for _ in range(500) for p in t.draw_patches(rng, 64, 64)]
    weights = np.array([p.mix_weight for p in patches if p.mix_weight is not None])
    n = len(patches)
    assert abs(len(weights) / n - 0.3) <= 5 * np.sqrt(0.3 * 0.7 / n)       # binomial
    assert weights.min() >= 0.2 and weights.max() <= 0.6
    assert abs(weights.mean() - 0.4) <= 5 * 0.4 / np.sqrt(12 * len(weights))   # uniform mean
    # mix_prob=0 draws nothing more: the same draws as a transform without the option.
    plain = RareClassCopyPaste(dataset=synth_cfg(mask_root), freq_thr=1.0, num_objects=4,
                               seed=0)
    off = RareClassCopyPaste(dataset=synth_cfg(mask_root), freq_thr=1.0, num_objects=4,
                             mix_prob=0.0, mix_range=(0.0, 1.0), seed=0)
    for a, b in zip(plain.draw_patches(np.random.default_rng(2), 64, 64),
                    off.draw_patches(np.random.default_rng(2), 64, 64), strict=True):
        assert np.array_equal(a.pixels, b.pixels) and (a.x, a.y) == (b.x, b.y)
        assert b.mix_weight is None


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_blend_mask_on_box_only_annotations_names_blend_and_the_fix(tiny_root: Path) -> None:
    t = RareClassCopyPaste(dataset=synth_cfg(tiny_root, with_masks=False), blend="mask",
                           freq_thr=0.5)
    with pytest.raises(ValueError, match=r"blend='mask'.*boxes only.*with_masks=True"):
        t.full_init()
    with pytest.raises(ValueError, match=r"blend='mask'.*use_masks=False"):
        RareClassCopyPaste(dataset=dict(type="CocoDataset"), blend="mask", use_masks=False)


@pytest.mark.parametrize("kwargs, name", [
    (dict(mix_prob=1.5), "mix_prob"),
    (dict(mix_range=(0.8, 0.2)), "mix_range"),
    (dict(mix_range=(0.2, 1.2)), "mix_range"),
    (dict(mix_range=0.5), "mix_range"),
])
def test_mixing_invalid_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RareClassCopyPaste(dataset=dict(type="CocoDataset"), **kwargs)


class WithDegenerateBoxes:
    """A dataset whose every other instance has a degenerate box (mmdet's ``CocoDataset``
    drops boxes under a pixel when it parses the json; other datasets may not)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset, self.metainfo = dataset, dataset.metainfo

    def __len__(self) -> int:
        return len(self.dataset)

    def get_data_info(self, idx: int) -> dict[str, Any]:
        info = copy.deepcopy(self.dataset.get_data_info(idx))
        for j, inst in enumerate(info["instances"]):
            x0, y0, x1, y1 = inst["bbox"]
            if j % 2 == 0:   # zero width, negative height, or not finite
                inst["bbox"] = [[x0, y0, x0, y1], [x0, y1, x1, y0],
                                [x0, y0, float("nan"), y1]][(idx + j) % 3]
        return info


def test_degenerate_boxes_are_never_crops_and_stay_unchanged(coco_dataset: Any) -> None:
    dataset = WithDegenerateBoxes(coco_dataset)
    valid = np.zeros(len(CLASSES), int)
    for idx in range(len(dataset)):
        for j, inst in enumerate(dataset.get_data_info(idx)["instances"]):
            valid[inst["bbox_label"]] += j % 2 == 1
    bank = build_crop_bank(dataset, np.full(len(CLASSES), 0.25), max_crops_per_class=3,
                           min_crop_size=0)
    # No degenerate box takes a place in the bank: every class fills its 3 places.
    assert (bank.sources[:, 1] % 2 == 1).all()
    np.testing.assert_array_equal(np.bincount(bank.labels, minlength=len(CLASSES)),
                                  np.minimum(valid, 3))
    # In the image: a degenerate box covers no pixel, so a paste over it leaves it as it was.
    boxes = np.array([[10, 10, 10, 30], [5, 20, 40, 20], [30, 30, 20, 40]], np.float32)
    patch = Patch(np.full((40, 40, 3), 9, np.uint8), np.ones((40, 40), np.float32), 0, 0, 1)
    out = paste_patches(np.zeros((48, 48, 3), np.uint8), boxes, np.zeros(3, int), None, None,
                        [patch], occlusion_thr=0.1)
    assert out.kept.all()
    np.testing.assert_array_equal(out.boxes[:3], boxes)


def test_crops_larger_than_the_image_are_shrunk_keeping_their_aspect(mask_root: Path) -> None:
    t = RareClassCopyPaste(dataset=synth_cfg(mask_root), freq_thr=1.0, num_objects=3,
                           scale_range=(3.0, 3.0), flip_prob=0.0, blend="mask", seed=0)
    rng = np.random.default_rng(0)
    height, width = 12, 16
    # Crop sides are at least 10 px: times 3 none fits, so every paste is shrunk by one factor
    # to touch the image's height or width, keeping its aspect ratio to a pixel of rounding.
    fits = [(3 * ch * f, 3 * cw * f) for ch, cw in t.bank.shapes
            for f in [min(height / (3 * ch), width / (3 * cw))]]
    for _ in range(30):
        for p in t.draw_patches(rng, height, width):
            h, w = p.alpha.shape
            assert 0 <= p.x <= width - w and 0 <= p.y <= height - h     # inside the image
            assert h >= height - 1 or w >= width - 1
            assert any(abs(h - fh) <= 1 and abs(w - fw) <= 1 for fh, fw in fits)
    out = t({"img": np.zeros((height, width, 3), np.uint8),
             "gt_bboxes": np.zeros((0, 4), np.float32), "gt_bboxes_labels": np.zeros(0, int)})
    assert out["num_pasted"] >= 1 and out["img"].shape == (height, width, 3)


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 1), (32, 32, 4)])
def test_grayscale_and_four_channel_images_are_refused(mask_root: Path,
                                                       shape: tuple[int, ...]) -> None:
    t = RareClassCopyPaste(dataset=synth_cfg(mask_root), freq_thr=0.5, prob=0.0)
    results = {"img": np.zeros(shape, np.uint8), "gt_bboxes": np.zeros((0, 4), np.float32),
               "gt_bboxes_labels": np.zeros(0, int)}
    # Refused whatever the coin says (prob=0), so a bad pipeline fails on its first image.
    with pytest.raises(ValueError, match=r"3-channel.*color_type='color'"):
        t(results)


def test_grayscale_and_rgba_source_files_give_three_channel_crops(tiny_root: Path,
                                                                  tmp_path: Path) -> None:
    coco = json.loads((tiny_root / "annotations/train.json").read_text())
    (tmp_path / "train").mkdir()
    modes = {}
    for i, image in enumerate(coco["images"]):
        rgb = Image.open(tiny_root / "train" / image["file_name"])
        mode = ("L", "RGBA", "RGB")[i % 3]
        converted = rgb.convert(mode)
        if mode == "RGBA":   # a varying alpha: must be dropped, not composited
            converted.putalpha(Image.fromarray((np.arange(64 * 64) % 256).astype(np.uint8)
                                               .reshape(64, 64)))
        converted.save(tmp_path / "train" / image["file_name"])
        modes[image["file_name"]] = mode
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/train.json").write_text(json.dumps(coco))
    cfg = dict(type="CocoDataset", data_root=f"{tmp_path}/", ann_file="annotations/train.json",
               data_prefix=dict(img="train/"), metainfo=dict(classes=CLASSES),
               filter_cfg=dict(filter_empty_gt=False), pipeline=[])
    t = RareClassCopyPaste(dataset=cfg, freq_thr=1.0)
    dataset = DATASETS.build(cfg)
    seen = set()
    for k, (idx, j) in enumerate(t.bank.sources):
        info = dataset.get_data_info(int(idx))
        name = Path(info["img_path"]).name
        seen.add(modes[name])
        expected = np.asarray(Image.open(info["img_path"]).convert("RGB"))[..., ::-1]   # BGR
        x0, y0, x1, y1 = (int(v) for v in info["instances"][int(j)]["bbox"])
        pixels, _ = t.bank.crop(k)
        assert pixels.shape == (y1 - y0, x1 - x0, 3)
        np.testing.assert_array_equal(pixels, expected[y0:y1, x0:x1])
    assert seen == {"L", "RGBA", "RGB"}


# ---------------------------------------------------------------------------------------------
# The experiment config, and a short run through the mmengine Runner.


def test_mask_config_is_the_copy_paste_config_with_masks() -> None:
    cfg = Config.fromfile(str(REPO / "configs" / MASK_CONFIG))
    base = Config.fromfile(str(REPO / "configs/faster_rcnn/"
                                  "rarecopypaste_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"))
    train, base_train = cfg.train_dataloader.dataset, base.train_dataloader.dataset
    assert train.synthetic == dict(base_train.synthetic, with_masks=True)
    assert train.data_root != base_train.data_root          # its own folder, never lt_synth
    paste = [t for t in train.pipeline if t.type == "RareClassCopyPaste"][0]
    base_paste = [t for t in base_train.pipeline if t.type == "RareClassCopyPaste"][0]
    assert paste.blend == "mask" and paste.keep_masks is False  # the detector trains on boxes
    own = ("blend", "dataset", "keep_masks")
    assert {k: v for k, v in paste.items() if k not in own} == \
        {k: v for k, v in base_paste.items() if k not in own}
    assert paste.dataset == {k: v for k, v in train.items() if k != "pipeline"}
    assert cfg.val_dataloader == base.val_dataloader and cfg.model == base.model


@pytest.mark.slow
def test_runner_trains_with_mask_paste(mask_root: Path, tmp_path: Path) -> None:
    cfg = tiny_experiment(MASK_CONFIG, mask_root, tmp_path / "work")
    train = cfg.train_dataloader.dataset
    train.synthetic = asdict(TINY_MASKS)
    for t in train.pipeline:
        if t.type == "RareClassCopyPaste":
            # keep_masks: the masks are checked after Resize and flip (the config drops them).
            t.update(prob=1.0, occlusion_thr=1.0, freq_thr=0.5, mix_prob=0.5, keep_masks=True)
            t.dataset["synthetic"] = asdict(TINY_MASKS)
    runner, recorder = train_and_record(cfg)
    paste = [t for t in runner.train_dataloader.dataset.pipeline.transforms
             if isinstance(t, RareClassCopyPaste)][0]
    assert paste.bank.masks is not None
    for sample in recorder.samples:
        gt = sample.gt_instances
        assert sample.num_pasted >= 1 and len(gt.masks) == len(gt.labels)
        # Every pasted object's box is the bounding box of its (resized, flipped) mask.
        masks = gt.masks.masks[-sample.num_pasted:]
        for m, box in zip(masks, gt.bboxes.tensor[-sample.num_pasted:].numpy(), strict=True):
            ys, xs = np.nonzero(m)
            assert xs.min() >= np.floor(box[0]) - 1 and xs.max() < np.ceil(box[2]) + 1
