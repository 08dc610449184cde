"""RepeatFactorDataset and DatasetEpochHook: mmengine's ClassBalancedDataset reproduced with
``ceil``, exact expectation with a fixed length, per-epoch redraw that reaches (persistent) data
workers, lazy initialisation, composition with ConcatDataset and MultiImageMixDataset, and
training through the MMEngine runner.

The tolerance of the convergence test is that of ``tests/test_samplers.py``: a slot count per
epoch is ``k + Bernoulli(q)``, so a mean over ``E`` epochs has a standard deviation of at most
``1 / (2 sqrt(E))``, and 5 of those are allowed.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from mmdet.datasets import ConcatDataset, MultiImageMixDataset
from mmdet.registry import DATASETS, TRANSFORMS
from mmengine.dataset import ClassBalancedDataset
from mmengine.runner import IterBasedTrainLoop, Runner
from torch.utils.data import DataLoader

from mmimb.datasets.wrappers import DatasetEpochHook, RepeatFactorDataset, datasets_with_epoch
from mmimb.samplers import round_factors
from mmimb.stats import ImageLabels, image_labels_from_dataset
from tests.test_samplers import (
    HAND_LABELS,
    TINY_LABELS,
    RecordImages,
    fake_dataset,
    tiny_detector_config,
    zipf_labels,
)

LABELS = zipf_labels(300, 15, seed=21)


def fake_config(labels: list[list[int]], num_classes: int = 15, **kwargs: Any) -> dict:
    return dict(type="MmimbTestDetDataset", labels=labels,
                classes=[f"class{c}" for c in range(num_classes)], **kwargs)


def img_ids(wrapper: Any) -> list[int]:
    return [wrapper[k]["img_id"] for k in range(len(wrapper))]


@pytest.mark.parametrize("thr", [0.01, 0.1, 0.5])
def test_ceil_is_mmengine_class_balanced_dataset(thr: float) -> None:
    dataset = fake_dataset(LABELS, 15)
    reference = ClassBalancedDataset(dataset, oversample_thr=thr)
    wrapper = RepeatFactorDataset(dataset, oversample_thr=thr, rounding="ceil")
    np.testing.assert_array_equal(wrapper.epoch_indices(), reference.repeat_indices)
    assert len(wrapper) == len(reference)
    assert img_ids(wrapper) == [reference[k]["img_id"] for k in range(len(reference))]
    assert wrapper.get_cat_ids(5) == reference.get_cat_ids(5)
    assert wrapper.get_data_info(7) == reference.get_data_info(7)


def test_fixed_length_exact_expectation_and_redraw() -> None:
    wrapper = RepeatFactorDataset(fake_dataset(LABELS, 15), oversample_thr=0.2, seed=3)
    r = wrapper.repeat_factors
    assert np.any(r % 1 > 0)
    length = len(wrapper)
    assert length == round(r.sum())
    expected = r * length / r.sum()
    epochs = 800
    draws = np.zeros((epochs, len(r)))
    for epoch in range(epochs):
        table = wrapper.epoch_indices(epoch)
        assert len(table) == length and np.all(np.diff(table) >= 0)
        draws[epoch] = np.bincount(table, minlength=len(r))
    assert np.all((draws == np.floor(expected)) | (draws == np.floor(expected) + 1))
    np.testing.assert_array_less(np.abs(draws.mean(0) - expected), 5 / (2 * math.sqrt(epochs)))
    assert abs(length / r.sum() - 1) <= 1 / (2 * len(r))

    # What the wrapper serves follows set_epoch; the same (seed, epoch) gives the same table.
    wrapper.set_epoch(4)
    assert img_ids(wrapper) == wrapper.epoch_indices(4).tolist()
    wrapper.set_epoch(5)
    assert img_ids(wrapper) == wrapper.epoch_indices(5).tolist()
    assert not np.array_equal(wrapper.epoch_indices(4), wrapper.epoch_indices(5))
    twin = RepeatFactorDataset(fake_dataset(LABELS, 15), oversample_thr=0.2, seed=3)
    np.testing.assert_array_equal(twin.epoch_indices(5), wrapper.epoch_indices(5))


@pytest.mark.parametrize("rounding", ["floor", "round"])
def test_deterministic_roundings_never_change(rounding: str) -> None:
    wrapper = RepeatFactorDataset(fake_dataset(LABELS, 15), oversample_thr=0.2,
                                  rounding=rounding)
    counts = round_factors(wrapper.repeat_factors, rounding)
    for epoch in (0, 3):
        wrapper.set_epoch(epoch)
        np.testing.assert_array_equal(np.bincount(img_ids(wrapper), minlength=300), counts)


def test_set_epoch_reaches_persistent_workers() -> None:
    wrapper = RepeatFactorDataset(fake_dataset(LABELS, 15), oversample_thr=0.3, seed=1)
    loader = DataLoader(wrapper, batch_size=16, num_workers=2, persistent_workers=True,
                        collate_fn=lambda batch: [item["img_id"] for item in batch])
    for epoch in (0, 1, 2):
        wrapper.set_epoch(epoch)
        loaded = [i for batch in loader for i in batch]
        assert loaded == wrapper.epoch_indices(epoch).tolist()
    assert not np.array_equal(wrapper.epoch_indices(1), wrapper.epoch_indices(2))


def test_config_metainfo_and_lazy_init() -> None:
    wrapper = DATASETS.build(dict(type="RepeatFactorDataset", oversample_thr=0.3,
                                  dataset=fake_config(LABELS), lazy_init=True))
    inner = wrapper.dataset
    assert inner.loads == 0 and not wrapper._fully_initialized
    meta = wrapper.metainfo
    assert meta["classes"] == tuple(f"class{c}" for c in range(15))
    meta["classes"] = ()
    assert wrapper.metainfo["classes"][0] == "class0"  # a copy is handed out
    assert inner.loads == 0
    assert len(wrapper) == round(wrapper.repeat_factors.sum())  # first use loads, once
    wrapper.full_init()
    wrapper[0]
    assert inner.loads == 1

    # An instance created lazily is not loaded by a lazy wrapper either.
    lazy_inner = fake_dataset(LABELS, 15, lazy_init=True)
    lazy = RepeatFactorDataset(lazy_inner, oversample_thr=0.3, lazy_init=True)
    assert lazy_inner.loads == 0
    lazy.get_data_info(0)
    assert lazy_inner.loads == 1


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(oversample_thr=0), "oversample_thr"),
    (dict(power=-1.0), "power"),
    (dict(rounding="bankers"), "rounding"),
    (dict(by="pixel"), "by"),
    (dict(reduce="min"), "reduce"),
])
def test_bad_arguments_raise_before_loading(kwargs: dict[str, Any], name: str) -> None:
    inner = fake_dataset(HAND_LABELS, lazy_init=True)
    with pytest.raises(ValueError, match=f"^{name} "):
        RepeatFactorDataset(inner, lazy_init=True, **kwargs)
    assert inner.loads == 0


def test_empty_dataset_and_bad_epoch_raise() -> None:
    with pytest.raises(ValueError, match="dataset is empty"):
        RepeatFactorDataset(fake_dataset([], 3))
    lazy = RepeatFactorDataset(fake_dataset([], 3), lazy_init=True)
    with pytest.raises(ValueError, match="dataset is empty"):
        len(lazy)
    wrapper = RepeatFactorDataset(fake_dataset(HAND_LABELS))
    with pytest.raises(ValueError, match="epoch"):
        wrapper.set_epoch(-2)


def test_over_concat_dataset() -> None:
    wrapper = RepeatFactorDataset(
        dict(type="ConcatDataset", datasets=[fake_config(LABELS[:120]),
                                             fake_config(LABELS[120:])]),
        oversample_thr=0.2, rounding="ceil")
    whole = RepeatFactorDataset(fake_dataset(LABELS, 15), oversample_thr=0.2, rounding="ceil")
    np.testing.assert_array_equal(wrapper.repeat_factors, whole.repeat_factors)
    np.testing.assert_array_equal(wrapper.epoch_indices(), whole.epoch_indices())
    # Slot k of the concatenation shows image table[k] of the concatenated images.
    for k in range(0, len(wrapper), 37):
        source = int(wrapper.epoch_indices()[k])
        assert wrapper[k]["img_id"] == (source if source < 120 else source - 120)
        assert wrapper.get_data_info(k)["instances"] == whole.get_data_info(k)["instances"]


def test_inside_concat_dataset_keeps_its_length() -> None:
    wrapper_cfg = dict(type="RepeatFactorDataset", dataset=fake_config(LABELS),
                       oversample_thr=0.2, seed=0)
    concat = ConcatDataset([wrapper_cfg, fake_config(LABELS[:10])])
    wrapper = concat.datasets[0]
    assert len(concat) == len(wrapper) + 10
    assert datasets_with_epoch(concat) == [wrapper]
    wrapper.set_epoch(2)
    assert [concat[k]["img_id"] for k in range(len(wrapper))] == \
        wrapper.epoch_indices(2).tolist()


@TRANSFORMS.register_module(name="MmimbTestMixLast", force=True)
class MixLast:
    """Mixes in the dataset's last item, so the test sees what the mix transform drew."""

    def get_indexes(self, dataset: Any) -> list[int]:
        return [len(dataset) - 1]

    def __call__(self, results: dict) -> dict:
        results["mixed_ids"] = [r["img_id"] for r in results["mix_results"]]
        return results


def test_under_multi_image_mix_dataset() -> None:
    mix = MultiImageMixDataset(
        dataset=dict(type="RepeatFactorDataset", dataset=fake_config(LABELS),
                     oversample_thr=0.3, seed=4),
        pipeline=[dict(type="MmimbTestMixLast")])
    wrapper = mix.dataset
    assert isinstance(wrapper, RepeatFactorDataset) and len(mix) == len(wrapper)
    assert datasets_with_epoch(mix) == [wrapper]
    for epoch in (0, 1):
        wrapper.set_epoch(epoch)
        table = wrapper.epoch_indices(epoch)
        item = mix[3]
        assert item["img_id"] == table[3] and item["mixed_ids"] == [table[-1]]
    # mmimb.stats reads through both wrappers: the labels of the images in the slots.
    labels = image_labels_from_dataset(mix)
    expected = ImageLabels.from_lists(LABELS, 15).subset(wrapper.epoch_indices(1))
    np.testing.assert_array_equal(labels.labels, expected.labels)


def test_hook_counts_passes_in_iteration_based_loops() -> None:
    wrapper = RepeatFactorDataset(fake_dataset(LABELS, 15), oversample_thr=0.3)
    loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)  # only its type and loader matter
    loop.dataloader = DataLoader(wrapper, batch_size=8)
    hook = DatasetEpochHook()
    for it in (0, 10, 100):
        hook.before_train_iter(SimpleNamespace(train_loop=loop, iter=it), batch_idx=it)
        assert wrapper.epoch == it * 8 // len(wrapper)
    assert wrapper.epoch > 0


@pytest.mark.slow
def test_runner_trains_with_repeat_factor_dataset(tmp_path: Path) -> None:
    recorder = RecordImages()
    cfg = tiny_detector_config(
        tmp_path / "data", tmp_path / "work", num_workers=1,
        dataset_wrapper=dict(type="RepeatFactorDataset", oversample_thr=0.3, seed=0),
        custom_hooks=[dict(type="DatasetEpochHook"), recorder])
    runner = Runner(**cfg)
    runner.train()
    wrapper = runner.train_dataloader.dataset
    assert isinstance(wrapper, RepeatFactorDataset) and wrapper.epoch == 1
    # Each epoch loaded exactly its table (shuffled by DefaultSampler), through a persistent
    # worker; the tables of the two epochs differ.
    tables = [Counter(wrapper.epoch_indices(e).tolist()) for e in (0, 1)]
    assert [Counter(recorder.epochs[e]) for e in (0, 1)] == tables
    assert tables[0] != tables[1]
    assert len(wrapper) == round(wrapper.repeat_factors.sum())
    assert len(TINY_LABELS) == len(wrapper.repeat_factors)
    assert all(math.isfinite(v) for v in recorder.losses)
