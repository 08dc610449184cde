"""Re-sampling samplers: hand-computed factors, mmengine's ``ClassBalancedDataset`` reproduced,
determinism per (seed, epoch), convergence of draws to their expectation, imbalanced-learn's
``sampling_strategy`` semantics, bad input, and training through the MMEngine runner.

Tolerances of the convergence tests: an image's draws in one epoch are ``k + Bernoulli(q)``, of
variance ``q (1 - q) <= 1/4``, independent across epochs; so the mean over ``E`` epochs has a
standard deviation of at most ``1 / (2 sqrt(E))``. The tests allow 5 of those (a two-sided
normal tail of 6e-7 per image, below 1e-4 even after a union bound over all images); the draws
are seeded, so the tests are deterministic anyway, the bound just says the tolerance is not
tuned to the seed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mmengine.hooks
import numpy as np
import pytest
from mmdet.registry import DATA_SAMPLERS, DATASETS, HOOKS
from mmdet.utils import register_all_modules
from mmengine.dataset import BaseDataset, ClassBalancedDataset
from PIL import Image

from mmimb.samplers import (
    ClassAwarePowerSampler,
    RepeatFactorSampler,
    UndersampleSampler,
    round_factors,
    shard,
    systematic_counts,
)
from mmimb.stats import (
    ClassStats,
    ImageLabels,
    class_aware_weights,
    class_repeat_factors,
    image_repeat_factors,
    undersampling_targets,
)

# ---------------------------------------------------------------------------------------------
# A light detection dataset (mmengine BaseDataset) with given labels; shared by the other tests.


@DATASETS.register_module(name="MmimbTestDetDataset", force=True)
class FakeDetDataset(BaseDataset):
    """``BaseDataset`` whose image ``i`` has boxes of classes ``labels[i]``.

    ``get_cat_ids`` is what mmengine's ``ClassBalancedDataset`` needs; mmimb reads
    ``get_data_info`` through :mod:`mmimb.stats`. ``loads`` counts annotation loads.
    """

    def __init__(self, labels: Sequence[Sequence[int]], classes: Sequence[str],
                 **kwargs: Any) -> None:
        self.labels = [list(map(int, x)) for x in labels]
        self.loads = 0
        kwargs.setdefault("serialize_data", False)
        super().__init__(metainfo={"classes": tuple(classes)}, **kwargs)

    def load_data_list(self) -> list[dict]:
        self.loads += 1
        return [{"img_id": i, "instances": [{"bbox": [0, 0, 4, 4], "bbox_label": c,
                                             "ignore_flag": 0} for c in labels]}
                for i, labels in enumerate(self.labels)]

    def get_cat_ids(self, idx: int) -> list[int]:
        return [inst["bbox_label"] for inst in self.get_data_info(idx)["instances"]]


def zipf_labels(num_images: int, num_classes: int, seed: int, empty: float = 0.1,
                max_classes: int = 3) -> list[list[int]]:
    """Random multi-label images, class ``c`` drawn with probability ``∝ (c + 1) ** -1.5``;
    a fraction ``empty`` of background-only images and duplicated boxes of a class."""
    rng = np.random.default_rng(seed)
    p = (np.arange(num_classes) + 1.0) ** -1.5
    p /= p.sum()
    out = []
    for _ in range(num_images):
        if rng.random() < empty:
            out.append([])
            continue
        classes = rng.choice(num_classes, rng.integers(1, max_classes + 1), p=p)
        out.append([int(c) for c in classes for _ in range(rng.integers(1, 3))])
    return out


def fake_dataset(labels: Sequence[Sequence[int]], num_classes: int | None = None,
                 **kwargs: Any) -> FakeDetDataset:
    num_classes = num_classes or 1 + max((c for x in labels for c in x), default=0)
    return FakeDetDataset(labels, [f"class{c}" for c in range(num_classes)], **kwargs)


# 10 images, classes a, b, c in 7, 2 and 1 images; image 8 has two boxes of c; image 9 is empty.
HAND_LABELS = [[0]] * 6 + [[0, 1], [1], [2, 2], []]


def draws_per_image(indices: np.ndarray, num_images: int) -> np.ndarray:
    return np.bincount(indices, minlength=num_images)


# ---------------------------------------------------------------------------------------------
# Statistics: repeat factors by hand.


def test_repeat_factors_by_hand() -> None:
    labels = ImageLabels.from_lists(HAND_LABELS, 3)
    stats = ClassStats.from_image_labels(labels)
    # f = (0.7, 0.2, 0.1), t = 0.4: r = (1, sqrt 2, 2).
    np.testing.assert_allclose(class_repeat_factors(stats, 0.4), [1, math.sqrt(2), 2])
    np.testing.assert_allclose(class_repeat_factors(stats, 0.4, power=1.0), [1, 2, 4])
    np.testing.assert_allclose(class_repeat_factors(stats, 0.4, power=0.0), [1, 1, 1])
    # By instance: 7, 2, 2 of 11 boxes.
    np.testing.assert_allclose(class_repeat_factors(stats, 0.4, by="instance"),
                               [1, math.sqrt(2.2), math.sqrt(2.2)])
    r = class_repeat_factors(stats, 0.4)
    s2 = math.sqrt(2)
    np.testing.assert_allclose(image_repeat_factors(labels, r),
                               [1] * 6 + [s2, s2, 2, 1])
    np.testing.assert_allclose(image_repeat_factors(labels, r, reduce="mean"),
                               [1] * 6 + [(1 + s2) / 2, s2, 2, 1])


def test_class_without_images_gets_factor_one() -> None:
    stats = ClassStats.from_image_labels(ImageLabels.from_lists([[0], [0, 2]], 4))
    np.testing.assert_allclose(class_repeat_factors(stats, 0.9), [1, 1, math.sqrt(1.8), 1])


def test_class_aware_weights_by_hand() -> None:
    labels = ImageLabels.from_lists(HAND_LABELS, 3)
    w = class_aware_weights(labels, power=1.0)
    # f = (0.7, 0.2, 0.1), background 0.1: weights 1/f.
    np.testing.assert_allclose(w, [1 / 0.7] * 6 + [5, 5, 10, 10])
    np.testing.assert_array_equal(class_aware_weights(labels, power=0.0), np.ones(10))
    # q = 1 on single-label images: each class (and background) is drawn equally often.
    single = ImageLabels.from_lists([[0]] * 6 + [[1]] * 3 + [[2]] + [[]] * 2, 3)
    w = class_aware_weights(single, power=1.0)
    per_class = [w[:6].sum(), w[6:9].sum(), w[9], w[10:].sum()]
    np.testing.assert_allclose(per_class, [per_class[0]] * 4)


# ---------------------------------------------------------------------------------------------
# Rounding and systematic sampling.


def test_deterministic_rounding_modes() -> None:
    f = np.array([1.0, 1.2, 1.5, 2.5, 2.999, 3.0])
    np.testing.assert_array_equal(round_factors(f, "ceil"), [1, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(round_factors(f, "floor"), [1, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(round_factors(f, "round"), [1, 1, 2, 3, 3, 3])
    with pytest.raises(ValueError, match="rounding"):
        round_factors(f, "nearest")
    with pytest.raises(ValueError, match="rng"):
        round_factors(f, "stochastic")


def test_stochastic_rounding_is_unbiased() -> None:
    f = np.random.default_rng(0).uniform(1, 4, size=50)
    epochs = 2000
    rng = np.random.default_rng(1)
    draws = np.stack([round_factors(f, "stochastic", rng) for _ in range(epochs)])
    assert np.all((draws == np.floor(f)) | (draws == np.floor(f) + 1))
    assert np.abs(draws.mean(0) - f).max() < 5 / (2 * math.sqrt(epochs))


def test_systematic_counts_fixed_total_and_exact_expectation() -> None:
    f = np.random.default_rng(0).uniform(1, 3, size=40)
    total = round(f.sum())
    rng = np.random.default_rng(2)
    draws = np.stack([systematic_counts(f, total, rng) for _ in range(2000)])
    assert np.all(draws.sum(1) == total)
    expected = f * total / f.sum()
    assert np.all((draws == np.floor(expected)) | (draws == np.floor(expected) + 1))
    assert np.abs(draws.mean(0) - expected).max() < 5 / (2 * math.sqrt(2000))


def test_shard_pads_then_splits_disjointly() -> None:
    epoch = np.arange(10) + 100
    shards = [shard(epoch, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    # Positions r, r + 3, ... of the epoch padded cyclically to 12: every position exactly once.
    padded = np.resize(epoch, 12)
    for r, s in enumerate(shards):
        np.testing.assert_array_equal(s, padded[r::3])
    assert sorted(np.concatenate(shards).tolist()) == sorted(padded.tolist())


# ---------------------------------------------------------------------------------------------
# RepeatFactorSampler.


@pytest.mark.parametrize("thr", [1e-3, 0.05, 0.2, 0.6])
def test_ceil_reproduces_mmengine_class_balanced_dataset(thr: float) -> None:
    dataset = fake_dataset(zipf_labels(400, 30, seed=3))
    reference = ClassBalancedDataset(dataset, oversample_thr=thr)
    sampler = RepeatFactorSampler(dataset, oversample_thr=thr, rounding="ceil", shuffle=False)
    np.testing.assert_array_equal(sampler.epoch_indices(), reference.repeat_indices)
    assert sampler.expected_length == len(reference)


def test_same_seed_and_epoch_same_order_other_epoch_other_draw() -> None:
    dataset = fake_dataset(zipf_labels(300, 20, seed=4))
    a = RepeatFactorSampler(dataset, oversample_thr=0.1, seed=7)
    b = RepeatFactorSampler(dataset, oversample_thr=0.1, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    first = np.array(list(a))
    b.set_epoch(4)
    second = np.array(list(b))
    assert not np.array_equal(first, second)
    # Not only the order: the stochastic rounding is redrawn too.
    assert not np.array_equal(draws_per_image(first, 300), draws_per_image(second, 300))
    assert list(a) == a.rank_indices(3).tolist() and len(a) == len(first)
    c = RepeatFactorSampler(dataset, oversample_thr=0.1, seed=8)
    c.set_epoch(3)
    assert list(c) != list(a)


def test_draws_converge_to_repeat_factors_and_epoch_length_to_their_sum() -> None:
    dataset = fake_dataset(zipf_labels(200, 20, seed=5))
    sampler = RepeatFactorSampler(dataset, oversample_thr=0.3, seed=0)
    r = sampler.repeat_factors
    assert r.max() > 2 and np.any(r % 1 > 0)  # something to round
    epochs = 1000
    draws = np.stack([draws_per_image(sampler.epoch_indices(e), 200) for e in range(epochs)])
    np.testing.assert_array_less(np.abs(draws.mean(0) - r), 5 / (2 * math.sqrt(epochs)))
    assert sampler.expected_length == pytest.approx(r.sum())
    # The epoch length is a sum of N independent Bernoulli parts: sd <= sqrt(N) / 2 per epoch.
    lengths = draws.sum(1)
    assert abs(lengths.mean() - r.sum()) < 5 * math.sqrt(200) / 2 / math.sqrt(epochs)
    assert lengths.std() > 0


@pytest.mark.parametrize("rounding", ["ceil", "floor", "round"])
def test_deterministic_roundings_repeat_the_same_multiset(rounding: str) -> None:
    dataset = fake_dataset(zipf_labels(100, 10, seed=6))
    sampler = RepeatFactorSampler(dataset, oversample_thr=0.3, rounding=rounding)
    expected = round_factors(sampler.repeat_factors, rounding)
    for epoch in (0, 5):
        np.testing.assert_array_equal(
            draws_per_image(sampler.epoch_indices(epoch), 100), expected)
    assert sampler.expected_length == expected.sum()


def test_infinite_sampler_runs_through_consecutive_epochs() -> None:
    dataset = fake_dataset(zipf_labels(50, 5, seed=7))
    sampler = RepeatFactorSampler(dataset, oversample_thr=0.5, seed=1, infinite=True)
    sampler.set_epoch(2)
    stream = iter(sampler)
    for epoch in (2, 3, 4):
        expected = sampler.rank_indices(epoch).tolist()
        assert [next(stream) for _ in expected] == expected


def test_reads_concat_dataset_as_one() -> None:
    from mmengine.dataset import ConcatDataset

    labels = zipf_labels(120, 8, seed=8)
    whole = RepeatFactorSampler(fake_dataset(labels, 8), oversample_thr=0.2)
    parts = ConcatDataset([fake_dataset(labels[:50], 8), fake_dataset(labels[50:], 8)])
    concat = RepeatFactorSampler(parts, oversample_thr=0.2)
    np.testing.assert_array_equal(concat.repeat_factors, whole.repeat_factors)


# ---------------------------------------------------------------------------------------------
# ClassAwarePowerSampler.


def test_class_aware_power_zero_is_a_plain_permutation() -> None:
    dataset = fake_dataset(zipf_labels(80, 6, seed=9))
    sampler = ClassAwarePowerSampler(dataset, power=0.0, seed=3)
    for epoch in (0, 1):
        assert sorted(sampler.epoch_indices(epoch).tolist()) == list(range(80))
    assert sampler.epoch_indices(0).tolist() != sampler.epoch_indices(1).tolist()


def test_class_aware_power_one_balances_single_label_classes() -> None:
    counts = [60, 20, 6, 2]
    labels = [[c] for c, n in enumerate(counts) for _ in range(n)]
    sampler = ClassAwarePowerSampler(fake_dataset(labels), power=1.0, num_samples=400, seed=0)
    epochs = 300
    per_class = np.zeros(4)
    image_class = np.repeat(np.arange(4), counts)
    for e in range(epochs):
        per_class += np.bincount(image_class[sampler.epoch_indices(e)], minlength=4)
    # Expected 100 draws per class per epoch; per-class totals are sums of Bernoulli parts.
    sd = math.sqrt(max(counts) / 4 * epochs)
    np.testing.assert_array_less(np.abs(per_class - 100 * epochs), 5 * sd)


def test_class_aware_draws_converge_to_expected_counts() -> None:
    dataset = fake_dataset(zipf_labels(150, 12, seed=10))
    sampler = ClassAwarePowerSampler(dataset, power=0.5, num_samples=300, seed=2)
    expected = sampler.expected_counts
    assert expected.sum() == pytest.approx(300)
    epochs = 1000
    draws = np.stack([draws_per_image(sampler.epoch_indices(e), 150) for e in range(epochs)])
    np.testing.assert_array_less(np.abs(draws.mean(0) - expected), 5 / (2 * math.sqrt(epochs)))


# ---------------------------------------------------------------------------------------------
# Under-sampling: imbalanced-learn's sampling_strategy, adapted to multi-label images.


def stats_of(image_counts: Sequence[int]) -> ClassStats:
    """Single-label images with the given counts per class, named a, b, c ..."""
    labels = [[c] for c, n in enumerate(image_counts) for _ in range(n)]
    names = tuple("abcdefgh"[: len(image_counts)])
    return ClassStats.from_image_labels(ImageLabels.from_lists(labels, len(image_counts)), names)


@pytest.mark.parametrize(("strategy", "expected"), [
    ("auto", [5, 5, 5, 5]),
    ("not minority", [5, 5, 5, 5]),
    ("majority", [5, 40, 10, 5]),
    ("not majority", [100, 5, 5, 5]),
    ("all", [5, 5, 5, 5]),
    (0.25, [20, 20, 10, 5]),  # n_minority / 0.25 = 20
    (1.0, [5, 5, 5, 5]),
    ({"a": 30, "c": 0}, [30, 40, 0, 5]),
    ({1: 7}, [100, 7, 10, 5]),
    (lambda counts: {k: v // 2 for k, v in counts.items() if v > 20}, [50, 20, 10, 5]),
])
def test_undersampling_targets_follow_imbalanced_learn(strategy: Any,
                                                       expected: list[int]) -> None:
    stats = stats_of([100, 40, 10, 5])
    np.testing.assert_array_equal(undersampling_targets(stats, strategy), expected)


@pytest.mark.parametrize(("strategy", "message"), [
    ({"a": 101}, "cannot increase"),
    (lambda counts: {"d": 6}, "cannot increase"),
    ({"zebra": 3}, "not in the dataset"),
    ({9: 3}, "neither a class name"),
    ({"a": -1}, "int >= 0"),
    ("minority", "over-sample"),
    ("balanced", "must be a float, a dict"),
    (0.0, r"\(0, 1\]"),
    (1.5, r"\(0, 1\]"),
    (lambda counts: [1, 2], "must return a dict"),
])
def test_bad_sampling_strategy_raises(strategy: Any, message: str) -> None:
    with pytest.raises(ValueError, match="sampling_strategy") as info:
        undersampling_targets(stats_of([100, 40, 10, 5]), strategy)
    assert info.match(message)


def test_callable_strategy_sees_class_names_and_counts() -> None:
    seen: dict[str, int] = {}
    undersampling_targets(stats_of([9, 4]), lambda counts: seen.update(counts) or {})
    assert seen == {"a": 9, "b": 4}


def imblearn_under_sampling_targets(counts: Sequence[int], strategy: str) -> list[int]:
    """imbalanced-learn's under-sampling targets for a string ``sampling_strategy``.

    A transcription of ``imblearn.utils._validation._sampling_strategy_*`` (imbalanced-learn
    is not installed here): ``target_stats`` maps the sorted labels to their counts, and
    ``max``/``min`` with ``key=target_stats.get`` take the first class of a tie.
    """
    y = [c for c, n in enumerate(counts) for _ in range(n)]
    unique, number = np.unique(y, return_counts=True)
    target_stats = dict(zip(unique.tolist(), number.tolist(), strict=True))
    n_min = min(target_stats.values())
    majority = max(target_stats, key=target_stats.__getitem__)
    minority = min(target_stats, key=target_stats.__getitem__)
    chosen = {"all": set(target_stats), "majority": {majority},
              "not majority": set(target_stats) - {majority},
              "not minority": set(target_stats) - {minority}}
    chosen["auto"] = chosen["not minority"]
    return [n_min if c in chosen[strategy] else n for c, n in enumerate(counts)]


@pytest.mark.parametrize("counts", [[5, 5, 2], [2, 5, 5], [7, 3, 7, 3], [4, 4, 4], [9, 2, 2],
                                    [1, 8, 8, 1, 8]])
@pytest.mark.parametrize("strategy", ["auto", "not minority", "majority", "not majority", "all"])
def test_tied_classes_follow_imbalanced_learn(counts: list[int], strategy: str) -> None:
    expected = imblearn_under_sampling_targets(counts, strategy)
    np.testing.assert_array_equal(undersampling_targets(stats_of(counts), strategy), expected)


def test_tied_majority_issue_case() -> None:
    """Issue 14: counts [5, 5, 2]; imbalanced-learn reduces the first majority class only."""
    stats = stats_of([5, 5, 2])
    assert undersampling_targets(stats, "majority").tolist() == [2, 5, 2]
    assert undersampling_targets(stats, "not majority").tolist() == [5, 2, 2]
    labels = [[c] for c, n in enumerate([5, 5, 2]) for _ in range(n)]
    sampler = UndersampleSampler(fake_dataset(labels), sampling_strategy="majority", seed=0)
    assert sampler.kept_counts(0).tolist() == [2, 5, 2]


MULTI_LABELS = zipf_labels(400, 8, seed=11, empty=0.15)


def test_undersampling_keeps_protected_images_and_reaches_targets() -> None:
    dataset = fake_dataset(MULTI_LABELS, 8)
    sampler = UndersampleSampler(dataset, sampling_strategy={"class0": 60, "class1": 40},
                                 background_count=10, seed=0)
    stats, targets = sampler.stats, sampler.targets
    reduced = targets < stats.image_counts
    assert reduced.tolist() == [True, True] + [False] * 6
    protected = np.array([any(not reduced[c] for c in x) for x in MULTI_LABELS])
    background = np.array([not x for x in MULTI_LABELS])
    seen = np.zeros(len(MULTI_LABELS), dtype=int)
    for epoch in range(30):
        kept = sampler.epoch_indices(epoch)
        assert len(np.unique(kept)) == len(kept)  # each image at most once
        mask = np.zeros(len(MULTI_LABELS), dtype=bool)
        mask[kept] = True
        assert mask[protected].all()
        assert mask[background].sum() == 10
        counts = sampler.kept_counts(epoch)
        assert np.all(counts[reduced] >= targets[reduced])
        np.testing.assert_array_equal(counts[~reduced], stats.image_counts[~reduced])
        # The reference count by a slow loop over the kept images.
        slow = Counter(c for i in kept for c in set(MULTI_LABELS[i]))
        assert [slow[c] for c in range(8)] == counts.tolist()
        seen += mask
    assert seen.min() > 0  # redrawn every epoch: no image is lost for good
    assert not np.array_equal(sampler.epoch_indices(0), sampler.epoch_indices(1))


def test_undersampling_single_label_hits_targets_exactly() -> None:
    labels = [[c] for c, n in enumerate([120, 50, 9, 3]) for _ in range(n)] + [[]] * 20
    sampler = UndersampleSampler(fake_dataset(labels), sampling_strategy="auto",
                                 background_ratio=0.25, seed=1)
    for epoch in range(5):
        np.testing.assert_array_equal(sampler.kept_counts(epoch), [3, 3, 3, 3])
        report = sampler.report(epoch)
        assert report["num_kept"] == 12 + 5 and report["num_background_kept"] == 5
        assert report["kept_counts"] == [3, 3, 3, 3]
        assert report["classes"] == ["class0", "class1", "class2", "class3"]
    assert len(sampler) == 17


def test_undersampling_draws_each_reduced_image_uniformly() -> None:
    labels = [[0]] * 40 + [[1]] * 10
    sampler = UndersampleSampler(fake_dataset(labels), sampling_strategy={"class0": 10}, seed=2)
    epochs = 800
    seen = np.zeros(50)
    for e in range(epochs):
        seen[sampler.epoch_indices(e)] += 1
    # Each class-0 image is kept with probability 10/40 (Bernoulli, sd <= 1/(2 sqrt(E))).
    np.testing.assert_array_less(np.abs(seen[:40] / epochs - 0.25), 5 / (2 * math.sqrt(epochs)))
    assert np.all(seen[40:] == epochs)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(background_ratio=0.5, background_count=1), "not both"),
    (dict(background_ratio=1.5), "background_ratio"),
    (dict(background_count=100), "background_count"),
    (dict(sampling_strategy={"class0": 0, "class1": 0}, background_count=0), "no image"),
])
def test_undersampling_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UndersampleSampler(fake_dataset([[0], [1], [], [0, 1]]), **kwargs)


# ---------------------------------------------------------------------------------------------
# Bad input and registration.


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(oversample_thr=0.0), "oversample_thr"),
    (dict(oversample_thr=-1e-3), "oversample_thr"),
    (dict(oversample_thr=float("nan")), "oversample_thr"),
    (dict(power=-0.5), "power"),
    (dict(rounding="nearest"), "rounding"),
    (dict(by="box"), "by"),
    (dict(reduce="median"), "reduce"),
    (dict(seed="0"), "seed"),
])
def test_repeat_factor_bad_arguments_name_themselves(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        RepeatFactorSampler(fake_dataset(HAND_LABELS), **kwargs)


@pytest.mark.parametrize("sampler", [RepeatFactorSampler, UndersampleSampler,
                                     ClassAwarePowerSampler])
def test_empty_dataset_raises(sampler: type) -> None:
    with pytest.raises(ValueError, match="dataset is empty"):
        sampler(fake_dataset([], 3))


def test_set_epoch_rejects_negative_epochs() -> None:
    sampler = RepeatFactorSampler(fake_dataset(HAND_LABELS))
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)


def test_registered_without_shadowing() -> None:
    register_all_modules(init_default_scope=False)
    import mmimb.datasets.wrappers as wrappers
    import mmimb.samplers as samplers

    for registry, names, module in [
        (DATA_SAMPLERS, ["RepeatFactorSampler", "UndersampleSampler", "ClassAwarePowerSampler"],
         samplers),
        (DATASETS, ["RepeatFactorDataset"], wrappers),
        (HOOKS, ["DatasetEpochHook"], wrappers),
    ]:
        for name in names:
            assert registry.module_dict[name] is getattr(module, name)
            assert name not in registry.parent.module_dict
    assert DATA_SAMPLERS.build(dict(type="RepeatFactorSampler", dataset=fake_dataset(HAND_LABELS),
                                    oversample_thr=0.4, seed=0)).repeat_factors.max() == 2


# ---------------------------------------------------------------------------------------------
# Training a real (tiny) detector through the MMEngine runner.


def write_tiny_coco(root: Path, labels: Sequence[Sequence[int]], classes: Sequence[str],
                    size: int = 32) -> Path:
    """Images with one filled rectangle per label, and their COCO json; returns the json."""
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, image_labels in enumerate(labels):
        pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        for c in image_labels:
            x, y = (int(v) for v in rng.integers(0, size - 12, 2))
            w, h = (int(v) for v in rng.integers(6, 12, 2))
            pixels[y:y + h, x:x + w] = 80 + 60 * c
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(classes)]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


TINY_LABELS = [[0]] * 6 + [[0, 1]] + [[1]] + [[2]] + [[]]
TINY_CLASSES = ("a", "b", "c")


def tiny_detector_config(root: Path, work_dir: Path, sampler: dict[str, Any] | None = None,
                         dataset_wrapper: dict[str, Any] | None = None, epochs: int = 2,
                         num_workers: int = 0, custom_hooks: Sequence[Any] = ()) -> dict:
    """A runner config: a RetinaNet with an 8-channel ResNet-18 on the tiny COCO set."""
    ann = write_tiny_coco(root, TINY_LABELS, TINY_CLASSES)
    dataset: dict[str, Any] = dict(
        type="CocoDataset", data_root=str(root), ann_file=ann.name, data_prefix=dict(img="img/"),
        metainfo=dict(classes=TINY_CLASSES), filter_cfg=dict(filter_empty_gt=False),
        pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
                  dict(type="PackDetInputs")])
    if dataset_wrapper is not None:
        dataset = dict(dataset_wrapper, dataset=dataset)
    return dict(
        default_scope="mmdet",
        work_dir=str(work_dir),
        model=dict(
            type="RetinaNet",
            data_preprocessor=dict(type="DetDataPreprocessor", mean=[0, 0, 0], std=[255] * 3,
                                   bgr_to_rgb=True, pad_size_divisor=32),
            backbone=dict(type="ResNet", depth=18, base_channels=8, out_indices=(1, 2, 3),
                          norm_cfg=dict(type="BN"), init_cfg=None),
            neck=dict(type="FPN", in_channels=[16, 32, 64], out_channels=16, num_outs=3),
            bbox_head=dict(
                type="RetinaHead", num_classes=3, in_channels=16, stacked_convs=1,
                feat_channels=16,
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=2,
                                      scales_per_octave=1, ratios=[1.0], strides=[8, 16, 32]),
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                target_stds=[1.0] * 4),
                loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25,
                              loss_weight=1.0),
                loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5,
                                         neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
                           sampler=dict(type="PseudoSampler"), allowed_border=-1,
                           pos_weight=-1, debug=False)),
        train_dataloader=dict(
            batch_size=2, num_workers=num_workers, persistent_workers=num_workers > 0,
            sampler=sampler or dict(type="DefaultSampler", shuffle=True), dataset=dataset),
        train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=epochs),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
        default_hooks=dict(checkpoint=None, logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=list(custom_hooks),
        randomness=dict(seed=0),
        log_level="WARNING",
    )


class RecordImages(mmengine.hooks.Hook):
    """Records which images (0-based) each training epoch loaded, and the losses."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[int]] = {}
        self.losses: list[float] = []

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        ids = [s.img_id - 1 for s in data_batch["data_samples"]]
        self.epochs.setdefault(runner.epoch, []).extend(ids)
        self.losses.append(float(outputs["loss"].detach()))


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["epoch", "iter"])
def test_runner_trains_with_repeat_factor_sampler(tmp_path: Path, loop: str) -> None:
    from mmengine.runner import Runner

    recorder = RecordImages()
    cfg = tiny_detector_config(
        tmp_path / "data", tmp_path / "work",
        sampler=dict(type="RepeatFactorSampler", oversample_thr=0.3, seed=5,
                     infinite=loop == "iter"),
        custom_hooks=[recorder])
    if loop == "iter":
        cfg["train_cfg"] = dict(type="IterBasedTrainLoop", max_iters=10)
    runner = Runner(**cfg)
    runner.train()
    sampler = runner.train_dataloader.sampler
    assert isinstance(sampler, RepeatFactorSampler)
    epochs = [sampler.epoch_indices(e).tolist() for e in range(4)]
    assert epochs[0] != epochs[1]
    if loop == "epoch":
        # The runner loaded exactly each epoch's draw, in order.
        assert [recorder.epochs[e] for e in (0, 1)] == epochs[:2]
    else:
        # One endless stream, epoch after epoch: 10 iterations of 2 images.
        assert recorder.epochs[0] == sum(epochs, [])[:20]
    # Image 8 (the only image of class c, f = 0.1) has r = sqrt(3): drawn 1 or 2 times.
    assert sampler.repeat_factors[8] == pytest.approx(math.sqrt(3))
    assert all(Counter(epoch)[8] in (1, 2) for epoch in epochs)
    assert all(math.isfinite(v) for v in recorder.losses)
