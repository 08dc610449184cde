"""Settings that cannot work fail at once, with a message that names the setting and the fix.

Issue 14, items 1 and 3: an infinite sampler under an epoch-based loop (a training that never
ends) is refused when the loop builds or first iterates it; ``oversample_thr`` takes a number
in ``(0, 1]`` or ``'auto'`` (the rule of ``mmimb-analyze --resample``, checked against the
formula by hand); a sigmoid loss in a head built for softmax, out-of-range labels of the
softmax focal loss and of ``RarityConditionedApply`` raise ``ValueError`` naming the cause
instead of a shape or index error from deep inside.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mmengine.hooks
import numpy as np
import pytest
import torch
from mmdet.registry import DATA_SAMPLERS, MODELS
from mmdet.utils import register_all_modules
from mmengine.runner import EpochBasedTrainLoop, Runner

from mmimb.analysis import recommend_repeat_threshold, resampling_effect
from mmimb.datasets.wrappers import RepeatFactorDataset
from mmimb.losses import ClassBalancedFocalLoss, SoftmaxFocalLoss
from mmimb.samplers import (
    ClassAwarePowerSampler,
    RepeatFactorSampler,
    UndersampleSampler,
    resolve_oversample_thr,
)
from mmimb.stats import ClassStats, ImageLabels, class_repeat_factors
from mmimb.transforms import RarityConditionedApply
from tests.test_samplers import HAND_LABELS, fake_dataset, tiny_detector_config

# ---------------------------------------------------------------------------------------------
# 1. infinite=True under EpochBasedTrainLoop: refused, never a training without end.


class IterationLimit(mmengine.hooks.Hook):
    """Stops a run that goes past ``limit`` iterations: the test fails instead of hanging."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.iterations = 0

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        self.iterations += 1
        if self.iterations >= self.limit:
            raise RuntimeError(f"{self.iterations} iterations in an epoch of "
                               f"{len(runner.train_dataloader)}: the epoch does not end")


SAMPLERS = [dict(type="RepeatFactorSampler", oversample_thr=0.3),
            dict(type="ClassAwarePowerSampler", power=0.5),
            dict(type="UndersampleSampler", sampling_strategy="auto")]

#: What the message must say: the setting, the loop that drives it, and what to use instead.
INFINITE_MESSAGE = (r"infinite=True\) never ends an epoch.*EpochBasedTrainLoop.*"
                    r"IterBasedTrainLoop.*infinite=False")


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s["type"])
def test_infinite_sampler_refused_when_an_epoch_loop_builds_it(tmp_path: Path,
                                                               sampler: dict) -> None:
    limit = IterationLimit(20)
    cfg = tiny_detector_config(tmp_path / "data", tmp_path / "work",
                               sampler=dict(sampler, seed=0, infinite=True),
                               custom_hooks=[limit], epochs=1)
    runner = Runner(**cfg)
    with pytest.raises(ValueError, match=INFINITE_MESSAGE):
        runner.train()
    assert limit.iterations == 0  # refused when the loop was built, before any step


@pytest.mark.slow
def test_infinite_sampler_refused_when_an_epoch_loop_iterates_it(tmp_path: Path) -> None:
    # A data loader built outside the loop (passed to the runner as an object): the sampler
    # cannot see the loop when it is built, only when the loop first iterates it.
    limit = IterationLimit(20)
    cfg = tiny_detector_config(tmp_path / "data", tmp_path / "work", custom_hooks=[limit],
                               sampler=dict(type="RepeatFactorSampler", oversample_thr=0.3,
                                            seed=0, infinite=True), epochs=1)
    register_all_modules(init_default_scope=True)
    loader = Runner.build_dataloader(cfg["train_dataloader"], seed=0)
    assert loader.sampler.infinite
    runner = Runner(**{**cfg, "train_dataloader": loader})
    with pytest.raises(ValueError, match=INFINITE_MESSAGE):
        runner.train()
    assert limit.iterations == 0


class BareEpochLoop(EpochBasedTrainLoop):
    """An ``EpochBasedTrainLoop`` without a runner: builds whatever it is given, as
    ``BaseLoop.__init__`` builds the data loader."""

    def __init__(self) -> None:  # no runner, no data loader
        pass

    def build(self, factory: Callable[[], Any]) -> Any:
        return factory()


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s["type"])
def test_infinite_sampler_refused_before_reading_labels(sampler: dict) -> None:
    dataset = fake_dataset(HAND_LABELS, lazy_init=True)
    cfg = {k: v for k, v in sampler.items() if k != "type"}
    cls = DATA_SAMPLERS.get(sampler["type"])
    with pytest.raises(ValueError, match=INFINITE_MESSAGE.replace("EpochBasedTrainLoop",
                                                                  "BareEpochLoop")):
        BareEpochLoop().build(lambda: cls(dataset, seed=0, infinite=True, **cfg))
    assert dataset.loads == 0
    # infinite=False is what the epoch loop wants, and builds.
    assert not BareEpochLoop().build(lambda: cls(dataset, seed=0, **cfg)).infinite


def test_infinite_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"^infinite must be True or False, got 'yes'"):
        RepeatFactorSampler(fake_dataset(HAND_LABELS), infinite="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [RepeatFactorSampler, ClassAwarePowerSampler,
                                 UndersampleSampler])
def test_infinite_sampler_outside_a_loop_still_streams(cls: type) -> None:
    # Outside any loop (and under IterBasedTrainLoop, see tests/test_samplers.py) the stream
    # goes on through consecutive epochs.
    sampler = cls(fake_dataset(HAND_LABELS), seed=3, infinite=True)
    stream = iter(sampler)
    first = [next(stream) for _ in range(len(sampler.epoch_indices(0)))]
    second = [next(stream) for _ in range(len(sampler.epoch_indices(1)))]
    assert first == sampler.epoch_indices(0).tolist()
    assert second == sampler.epoch_indices(1).tolist()


# ---------------------------------------------------------------------------------------------
# 3a. oversample_thr: a number in (0, 1] or 'auto'.

#: 200 images: class 0 in all of them, class 1 in one (f = 1 and 0.005): 'auto' is not capped.
SKEWED = [[0]] * 199 + [[0, 1]]


def image_labels(labels: list[list[int]]) -> ImageLabels:
    return ImageLabels.from_lists(labels, 1 + max(c for image in labels for c in image))


def auto_threshold_by_hand(labels: list[list[int]], power: float) -> float:
    """``t = f_min * 10 ** (1 / p)``, capped at ``f_max``, from the image frequencies."""
    classes = sorted({c for image in labels for c in image})
    freq = [sum(c in image for image in labels) / len(labels) for c in classes]
    return min(min(freq) * 10 ** (1 / power), max(freq))


@pytest.mark.parametrize(("labels", "power", "capped"), [
    (SKEWED, 0.5, False), (SKEWED, 1.0, False), (HAND_LABELS, 0.5, True),
    (HAND_LABELS, 1.0, True)])
def test_auto_threshold_is_the_analysis_rule(labels: list[list[int]], power: float,
                                             capped: bool) -> None:
    expected = auto_threshold_by_hand(labels, power)
    stats = ClassStats.from_image_labels(image_labels(labels))
    assert (expected == max(stats.image_counts) / len(labels)) == capped
    sampler = RepeatFactorSampler(fake_dataset(labels), oversample_thr="auto", power=power,
                                  seed=0)
    wrapper = RepeatFactorDataset(fake_dataset(labels), oversample_thr="auto", power=power,
                                  seed=0)
    assert sampler.threshold == pytest.approx(expected, rel=1e-12)
    assert wrapper.threshold == sampler.threshold
    assert sampler.threshold == recommend_repeat_threshold(stats, power=power).value
    assert resolve_oversample_thr("auto", stats, power) == sampler.threshold
    np.testing.assert_array_equal(sampler.class_factors,
                                  class_repeat_factors(stats, expected, power))
    np.testing.assert_array_equal(wrapper.repeat_factors, sampler.repeat_factors)
    if not capped:  # the rarest class is repeated exactly 10 times
        assert sampler.class_factors[1] == pytest.approx(10.0)
    # mmimb-analyze computes the same expected epoch for 'auto' and for its number.
    per_image = image_labels(labels)
    auto = resampling_effect({"type": "RepeatFactorSampler", "oversample_thr": "auto",
                              "power": power}, per_image, stats)
    number = resampling_effect({"type": "RepeatFactorSampler", "oversample_thr": expected,
                                "power": power}, per_image, stats)
    np.testing.assert_allclose(auto.images, number.images, rtol=1e-12)
    assert auto.epoch_length == pytest.approx(number.epoch_length, rel=1e-12)


def test_lazy_wrapper_resolves_auto_when_loaded() -> None:
    wrapper = RepeatFactorDataset(fake_dataset(SKEWED, lazy_init=True), oversample_thr="auto",
                                  lazy_init=True)
    assert not hasattr(wrapper, "threshold")
    wrapper.full_init()
    assert wrapper.threshold == pytest.approx(0.5)
    assert math.isclose(wrapper.class_factors[1], 10.0)


@pytest.mark.parametrize(("value", "error"), [
    ("automatic", ValueError), ("Auto", ValueError), ("0.01", ValueError),
    (None, TypeError), ([0.01], TypeError), (True, TypeError), (False, TypeError),
    (1.5, ValueError), (2, ValueError), (0.0, ValueError), (float("inf"), ValueError),
])
@pytest.mark.parametrize("cls", [RepeatFactorSampler, RepeatFactorDataset])
def test_bad_oversample_thr_names_itself_the_value_and_the_choices(
        cls: type, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        cls(fake_dataset(HAND_LABELS), oversample_thr=value)
    message = str(info.value)
    assert message.startswith("oversample_thr must be a number in (0, 1] or 'auto'")
    assert repr(value) in message


def test_oversample_thr_above_one_says_why() -> None:
    with pytest.raises(ValueError, match=r"oversample_thr .* got 1\.5: .*fraction .* cannot "
                                         r"exceed 1"):
        RepeatFactorSampler(fake_dataset(HAND_LABELS), oversample_thr=1.5)
    assert RepeatFactorSampler(fake_dataset(HAND_LABELS), oversample_thr=1).threshold == 1.0


def test_bad_settings_fail_before_the_annotations_load() -> None:
    dataset = fake_dataset(HAND_LABELS, lazy_init=True)
    with pytest.raises(TypeError, match="^oversample_thr must be"):
        RepeatFactorDataset(dataset, oversample_thr=None, lazy_init=True)
    assert dataset.loads == 0


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(by="instance"), r"oversample_thr='auto' is defined on image frequencies.*by="),
    (dict(power=0.0), r"oversample_thr='auto' needs power > 0"),
])
@pytest.mark.parametrize("cls", [RepeatFactorSampler, RepeatFactorDataset])
def test_auto_outside_its_rule_is_refused(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(fake_dataset(HAND_LABELS), oversample_thr="auto", **kwargs)


def test_auto_for_mmengine_wrapper_in_analysis_is_refused() -> None:
    labels = image_labels(HAND_LABELS)
    with pytest.raises(ValueError, match=r"oversample_thr='auto'.*ClassBalancedDataset"):
        resampling_effect({"type": "ClassBalancedDataset", "oversample_thr": "auto"}, labels,
                          ClassStats.from_image_labels(labels))


@pytest.mark.parametrize("power", ["0.5", None, True])
def test_power_of_the_wrong_type_names_itself(power: Any) -> None:
    with pytest.raises(TypeError, match=f"^power must be a finite number >= 0, got "
                                        f"{re.escape(repr(power))}"):
        RepeatFactorSampler(fake_dataset(HAND_LABELS), power=power)
    with pytest.raises(TypeError, match="^power must be"):
        ClassAwarePowerSampler(fake_dataset(HAND_LABELS), power=power)


def test_class_repeat_factors_wants_auto_resolved_first() -> None:
    stats = ClassStats.from_image_labels(image_labels(HAND_LABELS))
    with pytest.raises(ValueError, match=r"oversample_thr .*'auto'.*resolve_oversample_thr"):
        class_repeat_factors(stats, "auto")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# 3b. Losses: a sigmoid loss in a softmax-sized head; labels outside the columns.


def test_sigmoid_loss_in_a_head_configured_without_use_sigmoid() -> None:
    register_all_modules(init_default_scope=False)
    # The mistake as it happens: the head reads use_sigmoid from the loss config, where it
    # defaults to False, and builds C + 1 classifier outputs; the loss is sigmoid regardless.
    head = MODELS.build(dict(type="RetinaHead", num_classes=12, in_channels=8, stacked_convs=1,
                             feat_channels=8,
                             loss_cls=dict(type="ClassBalancedFocalLoss", num_classes=12)))
    assert head.cls_out_channels == 13 and isinstance(head.loss_cls, ClassBalancedFocalLoss)
    pred = torch.randn(6, head.cls_out_channels)
    labels = torch.tensor([0, 3, 12, 12, 11, 5])
    with pytest.raises(ValueError, match=r"pred has 13 columns.*num_classes=12.*use_sigmoid=True"):
        head.loss_cls(pred, labels)
    # Columns that differ otherwise name the two num_classes.
    with pytest.raises(ValueError, match=r"pred has 9 columns.*head's num_classes and the loss's"):
        head.loss_cls(torch.randn(6, 9), labels)


@pytest.mark.parametrize("bad", [99, 13, -1])
def test_softmax_focal_label_out_of_range(bad: int) -> None:
    loss = SoftmaxFocalLoss(num_classes=12)
    pred = torch.randn(5, 13)
    labels = torch.tensor([0, 12, bad, 4, 2])
    low, high = min(bad, 0), max(bad, 12)
    with pytest.raises(ValueError, match=rf"^target holds labels in \[{low}, {high}\].*"
                                         r"\[0, 13\).*the background"):
        loss(pred, labels)
    # Without num_classes the range is that of pred's columns.
    with pytest.raises(ValueError, match=r"^target .*\[0, 13\)"):
        SoftmaxFocalLoss()(pred, labels)


def test_softmax_focal_labels_in_range_unchanged() -> None:
    # The check does not alter valid input: against F.cross_entropy at gamma = 0.
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(7, 13, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 13, (7,), generator=gen)
    torch.testing.assert_close(SoftmaxFocalLoss(gamma=0.0)(pred, labels),
                               torch.nn.functional.cross_entropy(pred, labels))
    assert SoftmaxFocalLoss()(pred[:0], labels[:0]).item() == 0.0


# ---------------------------------------------------------------------------------------------
# 3c. RarityConditionedApply: a label that is not a class of its statistics.


def test_rarity_apply_label_outside_the_classes() -> None:
    stats = ClassStats.from_image_labels(image_labels(HAND_LABELS))
    apply = RarityConditionedApply([lambda r: r], class_stats=stats, rare_max=1, common_max=5)
    assert apply({"gt_bboxes_labels": np.array([0, 2])})["rarity_prob"] == 1.0
    for labels in ([0, 99], [-1]):
        bad = [v for v in labels if not 0 <= v < 3]
        with pytest.raises(ValueError, match=rf"label\(s\) {re.escape(str(bad))}.*3 classes"):
            apply({"gt_bboxes_labels": np.array(labels)})
