"""Estimated mattes of box-only crops (``RareClassCopyPaste(blend='matte')``).

References: drawn shapes with known masks (a filled circle on a random texture; the synthetic
set generated with ``with_masks=True``, whose exact instance masks the bank can also crop), and
the box rectangle as the baseline a matte must beat. Thresholds: a matte IoU of 0.9 with the
drawn circle (a circle fills pi/4 = 0.785 of its box, so the rectangle's IoU is 0.785 and 0.9
is only reached by an estimate that follows the boundary); on the synthetic set a mean of 0.85
over the non-rectangular shapes (small 10-24 px objects, where a one-pixel boundary error
costs several percent of IoU) and at least 0.08 above the rectangle's mean IoU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from mmdet.registry import DATASETS
from mmengine.registry import init_default_scope

from mmimb.datasets.synthetic import generate
from mmimb.transforms import RareClassCopyPaste
from mmimb.transforms import crop_bank as crop_bank_module
from mmimb.transforms.copy_paste import soft_alpha
from mmimb.transforms.crop_bank import CropBank, build_crop_bank, estimate_matte
from tests.conftest import TINY


@pytest.fixture(autouse=True)
def _mmdet_scope() -> None:
    init_default_scope("mmdet")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the bounding box of a mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def circle_scene(seed: int, size: int = 96, radius: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A filled circle on a random texture; its colours overlap the background's."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (5, 5), 0)
    img = (0.6 * img + 0.4 * rng.integers(0, 256, 3)).astype(np.uint8)
    truth = np.zeros((size, size), np.uint8)
    centre = (int(rng.integers(radius + 8, size - radius - 8)),
              int(rng.integers(radius + 8, size - radius - 8)))
    cv2.circle(truth, centre, radius, 1, -1)
    fg = (0.6 * rng.integers(0, 256, (size, size, 3)) + 0.4 * rng.integers(0, 256, 3))
    img[truth > 0] = fg.astype(np.uint8)[truth > 0]
    return img, truth > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matte_follows_the_drawn_circle(seed: int) -> None:
    img, truth = circle_scene(seed)
    x, y, w, h = box_of(truth)
    matte = estimate_matte(img, (x, y, w, h))
    assert matte is not None and matte.shape == (h, w)
    inside = truth[y:y + h, x:x + w]
    rect_iou = iou(np.ones_like(inside), inside)
    assert rect_iou == pytest.approx(np.pi / 4, abs=0.05)   # rasterised circle
    assert iou(matte, inside) >= 0.9 > rect_iou + 0.1
    assert np.array_equal(matte, estimate_matte(img, (x, y, w, h)))   # deterministic


def test_degenerate_estimates_are_refused() -> None:
    uniform = np.full((64, 64, 3), 128, np.uint8)
    assert estimate_matte(uniform, (16, 16, 32, 32)) is None
    img, _ = circle_scene(0)
    # The box fills the image: no background sample, GrabCut raises, the estimate is refused.
    assert estimate_matte(img, (0, 0, img.shape[1], img.shape[0])) is None


# ---------------------------------------------------------------------------------------------
# The bank: one estimate per crop, the synthetic set's true masks as reference.


def synth_dataset(root: Path) -> Any:
    return DATASETS.build(dict(type="SyntheticLongTailDataset", data_root=f"{root}/",
                               synthetic=asdict(replace(TINY, with_masks=True)),
                               filter_cfg=dict(filter_empty_gt=False), pipeline=[]))


@pytest.fixture(scope="module")
def masked_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth_matte") / "tiny", replace(TINY, with_masks=True))


def test_bank_mattes_match_true_masks(masked_root: Path) -> None:
    dataset = synth_dataset(masked_root)
    probs = np.full(TINY.num_classes, 1 / TINY.num_classes)
    true = build_crop_bank(dataset, probs, max_crops_per_class=10, use_masks=True)
    est = build_crop_bank(dataset, probs, max_crops_per_class=10, matte=True)
    assert np.array_equal(true.sources, est.sources) and est.matte
    shaped, rect, fallback_full = [], [], []
    for k in range(len(est)):
        _, mask = true.crop(k)
        _, matte = est.crop(k)
        assert mask is not None
        if mask.all():   # a rectangle fills its box: the rectangle is already right
            fallback_full.append(matte is None)
            continue
        assert matte is not None, f"crop {k}: a non-rectangular shape got no matte"
        shaped.append(iou(matte, mask))
        rect.append(mask.mean())
    assert len(shaped) >= 10
    assert np.mean(shaped) >= 0.85
    assert np.mean(shaped) >= np.mean(rect) + 0.08
    # Estimates covering (nearly) the whole box are refused and counted.
    assert est.matte_fallbacks == sum(fallback_full) > 0


def test_matte_computed_once_per_crop(masked_root: Path, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    calls = []
    real = crop_bank_module.estimate_matte

    def counting(*args: Any, **kwargs: Any) -> np.ndarray | None:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(crop_bank_module, "estimate_matte", counting)
    cfg = synth_dataset(masked_root)
    t = RareClassCopyPaste(dataset=cfg, freq_thr=None, num_objects=3, blend="matte",
                           max_crops_per_class=5, seed=3)
    rng = np.random.default_rng(0)
    pasted = [t.draw_patches(rng, 64, 64) for _ in range(30)]
    assert len(calls) == len(t.bank) and len(t.bank) < 3 * len(pasted)
    # Every paste goes through the cached matte (tight) or, where it was refused, the soft
    # rectangle.
    for p in (p for ps in pasted for p in ps):
        assert p.tight or np.array_equal(p.alpha, soft_alpha(*p.alpha.shape))


# ---------------------------------------------------------------------------------------------
# A degenerate crop on box-only data: a uniform image.


def box_only_coco(root: Path) -> dict[str, Any]:
    """Two 96x96 images: a circle of class 'disc', a uniform grey box of class 'blank'."""
    (root / "img").mkdir(parents=True)
    img, truth = circle_scene(5)
    cv2.imwrite(str(root / "img" / "0.png"), img)
    cv2.imwrite(str(root / "img" / "1.png"), np.full((96, 96, 3), 90, np.uint8))
    circle = [float(v) for v in box_of(truth)]
    coco = dict(
        images=[dict(id=i, file_name=f"{i}.png", width=96, height=96) for i in range(2)],
        categories=[dict(id=1, name="disc"), dict(id=2, name="blank")],
        annotations=[dict(id=1, image_id=0, category_id=1, bbox=circle, area=1.0, iscrowd=0),
                     dict(id=2, image_id=1, category_id=2, bbox=[20.0, 20.0, 40.0, 40.0],
                          area=1.0, iscrowd=0)])
    (root / "ann.json").write_text(json.dumps(coco))
    return dict(type="CocoDataset", data_root=f"{root}/", ann_file="ann.json",
                data_prefix=dict(img="img/"), metainfo=dict(classes=("disc", "blank")),
                filter_cfg=dict(filter_empty_gt=False), pipeline=[])


def test_uniform_crop_falls_back_to_soft_rectangle(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[str] = []
    monkeypatch.setattr(crop_bank_module, "print_log", lambda msg, **_: logged.append(msg))
    t = RareClassCopyPaste(dataset=box_only_coco(tmp_path), freq_thr=None, power=0,
                           num_objects=4, blend="matte", scale_range=(1, 1), flip_prob=0)
    bank: CropBank = t.bank
    assert bank.matte_fallbacks == 1
    assert bank.has_mask is not None and bank.has_mask.tolist() == [True, False]
    assert len(logged) == 1 and "1 of 2 degenerate" in logged[0]
    rng = np.random.default_rng(0)
    patches = [p for _ in range(10) for p in t.draw_patches(rng, 96, 96)]
    assert {p.label for p in patches} == {0, 1}
    for p in patches:
        if p.label == 1:
            assert not p.tight and np.array_equal(p.alpha, soft_alpha(40, 40))
        else:
            assert p.tight and set(np.unique(p.alpha)) == {0.0, 1.0}
            assert np.array_equal(p.alpha > 0, bank.crop(0)[1])


def test_mixing_a_matte_with_a_fallback_crop_keeps_a_mask(tmp_path: Path) -> None:
    """A class with one refused and one accepted matte: the refused crop counts as its rectangle."""
    cfg = box_only_coco(tmp_path)
    t = RareClassCopyPaste(dataset=cfg, freq_thr=None, num_objects=1, blend="matte",
                           mix_prob=1.0, mix_range=(0.5, 0.5), scale_range=(1, 1), flip_prob=0)
    bank = t.bank
    # Relabel the blank crop as a second disc, so the class has one crop of each kind.
    bank.labels[:] = 0
    bank.by_class = [np.arange(2), np.zeros(0, np.int64)]
    t._class_cdf = np.array([1.0, 1.0])
    (patch,) = t.draw_patches(np.random.default_rng(1), 96, 96)
    assert patch.mix_weight == 0.5 and patch.tight
    assert (patch.alpha > 0).all()   # union with the refused crop's full rectangle


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_matte_with_annotated_masks_requested_raises(masked_root: Path) -> None:
    with pytest.raises(ValueError, match="use_masks=True"):
        RareClassCopyPaste(dataset=synth_dataset(masked_root), blend="matte", use_masks=True)
    probs = np.full(TINY.num_classes, 1 / TINY.num_classes)
    with pytest.raises(ValueError, match="use_masks"):
        build_crop_bank(synth_dataset(masked_root), probs, use_masks=True, matte=True)


def test_matte_on_masked_data_ignores_the_annotated_masks(masked_root: Path) -> None:
    """Documented: with use_masks='auto', 'matte' estimates its own masks on data with masks."""
    t = RareClassCopyPaste(dataset=synth_dataset(masked_root), freq_thr=None, blend="matte",
                           max_crops_per_class=5)
    probs = np.full(TINY.num_classes, 1 / TINY.num_classes)
    true = build_crop_bank(synth_dataset(masked_root), probs, max_crops_per_class=5,
                           use_masks=True)
    assert t.bank.matte and t.bank.matte_fallbacks > 0
    assert np.array_equal(t.bank.sources, true.sources)
    assert t.bank.masks is not None and true.masks is not None
    assert not np.array_equal(t.bank.masks, true.masks)
