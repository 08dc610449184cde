"""The statistics module against slow, obviously correct loops and the paper's formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mmengine.dataset import ConcatDataset

from mmimb.stats import (
    ClassStats,
    ImageLabels,
    class_balanced_weights,
    class_stats,
    class_stats_from_coco,
    effective_number,
    frequency_groups,
    image_labels_from_coco,
    image_repeat_factors,
    label_dtype,
    validate_counts,
)


def random_labels(rng: np.random.Generator, n_images: int, n_classes: int) -> list[list[int]]:
    return [rng.integers(0, n_classes, size=rng.integers(0, 6)).tolist() for _ in range(n_images)]


def test_counts_match_loops() -> None:
    rng = np.random.default_rng(0)
    per_image = random_labels(rng, 200, 7)
    stats = ClassStats.from_image_labels(ImageLabels.from_lists(per_image, 7))
    for c in range(7):
        assert stats.instance_counts[c] == sum(labels.count(c) for labels in per_image)
        assert stats.image_counts[c] == sum(c in labels for labels in per_image)
    assert stats.num_empty_images == sum(not labels for labels in per_image)
    assert stats.num_images == 200


def test_subset_and_concat_match_lists() -> None:
    rng = np.random.default_rng(1)
    a, b = random_labels(rng, 30, 4), random_labels(rng, 20, 4)
    la, lb = ImageLabels.from_lists(a, 4), ImageLabels.from_lists(b, 4)
    both = la.concat(lb)
    idx = rng.integers(0, 50, size=40)
    sub = both.subset(idx)
    expected = [(a + b)[i] for i in idx]
    got = [sub.labels[sub.offsets[i]:sub.offsets[i + 1]].tolist() for i in range(len(idx))]
    assert got == expected


def test_effective_number_and_class_balanced_weights_follow_cui_et_al() -> None:
    counts = np.array([1000, 100, 10, 1, 0])
    for beta in (0.9, 0.99, 0.999):
        en = effective_number(counts, beta)
        np.testing.assert_allclose(en, [(1 - beta ** n) / (1 - beta) for n in counts])
        w = class_balanced_weights(counts, beta)
        ref = np.array([(1 - beta) / (1 - beta ** max(n, 1)) for n in counts])
        np.testing.assert_allclose(w, ref / ref.sum() * len(counts))
        assert w.sum() == pytest.approx(len(counts))
        assert np.all(np.isfinite(w)) and w[4] == pytest.approx(w[3])  # zero count -> as one
    np.testing.assert_allclose(class_balanced_weights(counts, 0.0), np.ones(5))
    # beta -> 1 tends to inverse frequency.
    w = class_balanced_weights([1000, 100, 10], 1 - 1e-9)
    np.testing.assert_allclose(w / w[0], [1, 10, 100], rtol=1e-4)


@pytest.mark.parametrize("beta", [-0.1, 1.0, 1.5])
def test_beta_out_of_range(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights([1, 2], beta)


def test_frequency_groups_lvis_thresholds() -> None:
    groups = frequency_groups([1, 10, 11, 100, 101, 0])
    assert groups.tolist() == [0, 0, 1, 1, 2, 0]
    with pytest.raises(ValueError, match="common_max"):
        frequency_groups([1], rare_max=5, common_max=4)


def test_validate_counts_errors() -> None:
    with pytest.raises(ValueError, match="has 2 entries .* num_classes=3"):
        validate_counts([1, 2], 3)
    with pytest.raises(ValueError, match=r"classes \[1\] have \[-2.0\]"):
        validate_counts([1, -2, 3], 3)
    with pytest.raises(ValueError, match="finite"):
        validate_counts([1, np.nan], 2)
    with pytest.raises(ValueError, match="label 5 is outside"):
        ImageLabels.from_lists([[5]], 3)


def test_from_mmdet_dataset_and_concat(tiny_root: Path) -> None:
    from mmdet.datasets import CocoDataset

    import mmimb  # noqa: F401

    coco_stats = class_stats_from_coco(tiny_root / "annotations/train.json")
    names = coco_stats.classes

    def build() -> CocoDataset:
        return CocoDataset(data_root=str(tiny_root), ann_file="annotations/train.json",
                           data_prefix={"img": "train/"}, metainfo={"classes": names},
                           filter_cfg={"filter_empty_gt": False}, pipeline=[])

    ds = build()
    stats = class_stats(ds)
    assert stats.classes == names
    np.testing.assert_array_equal(stats.instance_counts, coco_stats.instance_counts)
    np.testing.assert_array_equal(stats.image_counts, coco_stats.image_counts)
    assert stats.num_empty_images == coco_stats.num_empty_images > 0
    doubled = class_stats(ConcatDataset([build(), build()]))
    np.testing.assert_array_equal(doubled.instance_counts, 2 * coco_stats.instance_counts)
    labels, _ = image_labels_from_coco(tiny_root / "annotations/train.json")
    assert labels.num_images == len(ds)


def test_coco_with_unknown_ids_raises() -> None:
    ann = {"images": [{"id": 1}], "categories": [{"id": 3, "name": "a"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 9}]}
    with pytest.raises(ValueError, match="unknown category_id 9"):
        image_labels_from_coco(ann)
    ann["annotations"][0].update(category_id=3, image_id=2)
    with pytest.raises(ValueError, match="unknown image_id 2"):
        image_labels_from_coco(ann)


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 16])
def test_blockwise_counting_matches_loops(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting block by block gives the loops' answer whatever the block size."""
    from mmimb import stats as stats_module

    monkeypatch.setattr(stats_module, "BLOCK_LABELS", block)
    rng = np.random.default_rng(block)
    per_image = random_labels(rng, 120, 9)
    labels = ImageLabels.from_lists(per_image, 9)
    draws = rng.uniform(0, 3, size=120)
    boxes, images = labels.class_counts(draws)
    pairs = list(zip(draws, per_image, strict=True))
    for c in range(9):
        assert boxes[c] == pytest.approx(sum(d * x.count(c) for d, x in pairs))
        assert images[c] == pytest.approx(sum(d * (c in x) for d, x in pairs))
    image_idx, class_idx = labels.unique_pairs()
    expected = [(i, c) for i, x in enumerate(per_image) for c in sorted(set(x))]
    assert list(zip(image_idx.tolist(), class_idx.tolist(), strict=True)) == expected
    factors = rng.uniform(1, 5, size=9)
    np.testing.assert_array_equal(
        image_repeat_factors(labels, factors),
        [max((factors[c] for c in x), default=1.0) for x in per_image])
    np.testing.assert_allclose(
        image_repeat_factors(labels, factors, reduce="mean"),
        [np.mean([factors[c] for c in set(x)]) if x else 1.0 for x in per_image])


@pytest.mark.parametrize(("num_classes", "dtype"), [
    (1, np.int16), (32768, np.int16), (32769, np.int32), (2**31, np.int32),
    (2**31 + 1, np.int64)])
def test_label_dtype_is_the_smallest_that_holds_every_label(num_classes: int,
                                                            dtype: type) -> None:
    assert label_dtype(num_classes) == np.dtype(dtype)


def test_labels_are_stored_compactly_and_non_integer_labels_raise() -> None:
    labels = ImageLabels(np.array([3, 0, 1203 - 1]), np.array([0, 2, 3]), 1203)
    assert labels.labels.dtype == np.int16 and labels.offsets.dtype == np.int64
    assert labels.labels.tolist() == [3, 0, 1202]
    with pytest.raises(TypeError, match="labels must be an integer array"):
        ImageLabels(np.array([0.5]), np.array([0, 1]), 2)
