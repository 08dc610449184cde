"""Crowd boxes (``iscrowd=1``, kept by mmdet's ``CocoDataset`` with ``ignore_flag=1``) and the
``include_ignored`` setting of every sampler and wrapper, on real ``CocoDataset`` objects built
from small COCO files.

References: mmengine's ``ClassBalancedDataset`` (which counts crowd boxes through
``get_cat_ids``) and, for the default that leaves them out, the same mmengine wrapper on the
same file with the crowd annotations deleted; pycocotools for image counts per class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmdet.datasets import CocoDataset
from mmengine.dataset import ClassBalancedDataset
from pycocotools.coco import COCO

from mmimb.datasets.wrappers import RepeatFactorDataset
from mmimb.samplers import ClassAwarePowerSampler, RepeatFactorSampler, UndersampleSampler
from mmimb.stats import ImageLabels, class_aware_weights

#: One ``(class index, is crowd)`` pair per box, one list per image.
Boxes = list[list[tuple[int, bool]]]


def write_coco(path: Path, boxes: Boxes, classes: tuple[str, ...]) -> Path:
    """A COCO file with one image per entry of ``boxes`` (category ids start at 1)."""
    images = [dict(id=i + 1, file_name=f"{i}.jpg", height=64, width=64)
              for i in range(len(boxes))]
    annotations = [
        dict(id=len(images) * 100 + i * 10 + k, image_id=i + 1, category_id=c + 1,
             bbox=[4.0 + k, 4.0, 20.0, 20.0], area=400.0, iscrowd=int(crowd))
        for i, image in enumerate(boxes) for k, (c, crowd) in enumerate(image)]
    categories = [dict(id=c + 1, name=name) for c, name in enumerate(classes)]
    path.write_text(json.dumps(dict(images=images, annotations=annotations,
                                    categories=categories)))
    return path


def coco_dataset(path: Path, classes: tuple[str, ...]) -> CocoDataset:
    """mmdet's ``CocoDataset`` on ``path``, no filtering (empty images stay)."""
    return CocoDataset(ann_file=str(path), metainfo=dict(classes=classes),
                       data_prefix=dict(img=""), pipeline=[], filter_cfg=None)


def without_crowd(boxes: Boxes) -> Boxes:
    return [[(c, False) for c, crowd in image if not crowd] for image in boxes]


def random_boxes(num_images: int, num_classes: int, seed: int) -> Boxes:
    """Long-tailed boxes, about 15% of them crowd; some images empty or crowd-only."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_classes + 1) ** 1.5
    return [[(int(c), bool(rng.random() < 0.15))
             for c in rng.choice(num_classes, rng.integers(0, 4), p=p / p.sum())]
            for _ in range(num_images)]


#: The smallest case of issue 14: 20 images of class a; b as an ordinary box in image 0 and as
#: a crowd box in images 4 to 6.
SMALL_CLASSES = ("a", "b")
SMALL: Boxes = [[(0, False)] for _ in range(20)]
SMALL[0].append((1, False))
for _i in (4, 5, 6):
    SMALL[_i].append((1, True))

RANDOM_CLASSES = tuple(f"class{c}" for c in range(6))
RANDOM = random_boxes(120, 6, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    path = tmp_path_factory.mktemp("crowd") / "small.json"
    return coco_dataset(write_coco(path, SMALL, SMALL_CLASSES), SMALL_CLASSES)


@pytest.fixture(scope="module")
def random_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[CocoDataset, CocoDataset, Path]:
    """The random set with crowd boxes, the same without them, and the first one's file."""
    root = tmp_path_factory.mktemp("crowd")
    with_path = write_coco(root / "with.json", RANDOM, RANDOM_CLASSES)
    without_path = write_coco(root / "without.json", without_crowd(RANDOM), RANDOM_CLASSES)
    return (coco_dataset(with_path, RANDOM_CLASSES), coco_dataset(without_path, RANDOM_CLASSES),
            with_path)


def test_coco_dataset_keeps_crowd_boxes_as_ignored(small: CocoDataset) -> None:
    """The premise: mmdet keeps crowd boxes with ignore_flag=1, and get_cat_ids lists them."""
    flags = [inst["ignore_flag"] for inst in small.get_data_info(4)["instances"]]
    assert sorted(flags) == [0, 1]
    assert sorted(small.get_cat_ids(4)) == [0, 1]


def test_smallest_case_of_the_issue(small: CocoDataset) -> None:
    reference = ClassBalancedDataset(small, oversample_thr=0.5)
    counts = np.bincount(reference.repeat_indices, minlength=20)
    # mmengine: f_b = 4/20, r_b = sqrt(0.5 / 0.2) = 1.58 -> 2 draws of images 0, 4, 5, 6.
    assert counts.tolist() == [2, 1, 1, 1, 2, 2, 2] + [1] * 13
    parity = RepeatFactorDataset(small, oversample_thr=0.5, rounding="ceil",
                                 include_ignored=True)
    np.testing.assert_array_equal(parity.epoch_indices(), reference.repeat_indices)
    # Default (crowd boxes left out): f_b = 1/20, r_b = sqrt(10) = 3.16 -> image 0 drawn 4 times.
    default = RepeatFactorDataset(small, oversample_thr=0.5, rounding="ceil")
    assert np.bincount(default.epoch_indices(), minlength=20).tolist() == [4] + [1] * 19
    assert (len(parity), len(default)) == (24, 23)


@pytest.mark.parametrize("thr", [0.01, 0.1, 0.3, 0.5])
def test_ceil_matches_mmengine_on_coco_with_crowd(
        random_pair: tuple[CocoDataset, CocoDataset, Path], thr: float) -> None:
    with_crowd, no_crowd, _ = random_pair
    reference = ClassBalancedDataset(with_crowd, oversample_thr=thr).repeat_indices
    wrapper = RepeatFactorDataset(with_crowd, oversample_thr=thr, rounding="ceil",
                                  include_ignored=True)
    np.testing.assert_array_equal(wrapper.epoch_indices(), reference)
    sampler = RepeatFactorSampler(with_crowd, oversample_thr=thr, rounding="ceil",
                                  include_ignored=True, shuffle=False, seed=0)
    np.testing.assert_array_equal(sampler.epoch_indices(), reference)
    # The default leaves the crowd boxes out: mmengine on the file without them.
    reference_no_crowd = ClassBalancedDataset(no_crowd, oversample_thr=thr).repeat_indices
    for default in (RepeatFactorDataset(with_crowd, oversample_thr=thr, rounding="ceil"),
                    RepeatFactorSampler(with_crowd, oversample_thr=thr, rounding="ceil",
                                        shuffle=False, seed=0)):
        np.testing.assert_array_equal(default.epoch_indices(), reference_no_crowd)


def test_the_setting_changes_the_factors(
        random_pair: tuple[CocoDataset, CocoDataset, Path]) -> None:
    """The random set is one where crowd boxes matter (else the parity test proves little)."""
    with_crowd, _, _ = random_pair
    factors = [RepeatFactorSampler(with_crowd, oversample_thr=0.3, include_ignored=flag,
                                   seed=0).repeat_factors for flag in (False, True)]
    assert not np.allclose(*factors)


def labels_from_cat_ids(dataset: CocoDataset, include_ignored: bool) -> ImageLabels:
    """Reference labels: mmdet's get_cat_ids (every box) or its non-ignored instances."""
    per_image = [
        dataset.get_cat_ids(i) if include_ignored else
        [inst["bbox_label"] for inst in dataset.get_data_info(i)["instances"]
         if not inst["ignore_flag"]]
        for i in range(len(dataset))]
    return ImageLabels.from_lists(per_image, len(dataset.metainfo["classes"]))


@pytest.mark.parametrize("include_ignored", [False, True])
def test_class_aware_sampler_counts_as_asked(
        random_pair: tuple[CocoDataset, CocoDataset, Path], include_ignored: bool) -> None:
    with_crowd, _, _ = random_pair
    sampler = ClassAwarePowerSampler(with_crowd, power=0.5, include_ignored=include_ignored,
                                     seed=0)
    expected = class_aware_weights(labels_from_cat_ids(with_crowd, include_ignored), 0.5)
    np.testing.assert_allclose(sampler.weights, expected)


@pytest.mark.parametrize("include_ignored", [False, True])
def test_undersample_sampler_counts_as_pycocotools(
        random_pair: tuple[CocoDataset, CocoDataset, Path], include_ignored: bool) -> None:
    with_crowd, _, path = random_pair
    coco = COCO(str(path))
    iscrowd: Any = None if include_ignored else False  # pycocotools: None = every box
    expected = [len({a["image_id"] for a in coco.loadAnns(
        coco.getAnnIds(catIds=[c + 1], iscrowd=iscrowd))}) for c in range(6)]
    sampler = UndersampleSampler(with_crowd, sampling_strategy="auto",
                                 include_ignored=include_ignored, seed=0)
    assert sampler.stats.image_counts.tolist() == expected
    # Every kept class reaches its target, counted the same way.
    assert np.all(sampler.kept_counts(0) >= sampler.targets)


@pytest.mark.parametrize("build", [
    lambda d: RepeatFactorSampler(d, include_ignored="yes"),
    lambda d: ClassAwarePowerSampler(d, include_ignored=1),
    lambda d: UndersampleSampler(d, include_ignored=None),
    lambda d: RepeatFactorDataset(d, include_ignored="yes", lazy_init=True),
])
def test_include_ignored_must_be_a_bool(build: Any) -> None:
    # A dataset that must not be read: the check comes first.
    with pytest.raises(TypeError, match="include_ignored must be True or False"):
        build(object())
