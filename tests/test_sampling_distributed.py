"""Two real processes (``torch.multiprocessing`` spawn, gloo on CPU): every sampler's rank shards
are disjoint, cover the epoch and have equal lengths; every rank computes the same epoch, also
when the seed is drawn by rank 0 and broadcast; a run in another process with the same seed
gives the same epochs; ``set_epoch`` changes the order and the stochastic draw.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from mmimb.datasets.wrappers import RepeatFactorDataset
from mmimb.samplers import (
    ClassAwarePowerSampler,
    RepeatFactorSampler,
    ResamplingSampler,
    UndersampleSampler,
    shard,
)
from tests.test_samplers import fake_dataset, zipf_labels

WORLD_SIZE = 2
EPOCHS = (0, 1)
LABELS = zipf_labels(101, 10, seed=31, empty=0.2)  # odd sizes, so that padding happens
SEED = 1234


def make_samplers(seed: int | None) -> dict[str, ResamplingSampler]:
    dataset = fake_dataset(LABELS, 10)
    return {
        "repeat_factor": RepeatFactorSampler(dataset, oversample_thr=0.2, seed=seed),
        "repeat_factor_ceil": RepeatFactorSampler(dataset, oversample_thr=0.2,
                                                  rounding="ceil", seed=seed),
        "undersample": UndersampleSampler(dataset, sampling_strategy=0.3,
                                          background_ratio=0.5, seed=seed),
        "class_aware": ClassAwarePowerSampler(dataset, power=0.5, seed=seed),
    }


def _run_rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD_SIZE)
    result: dict[str, Any] = {}
    for seeded in (True, False):
        for name, sampler in make_samplers(SEED if seeded else None).items():
            key = f"{name}_{'seeded' if seeded else 'broadcast'}"
            result[f"{key}_seed"] = sampler.seed
            for epoch in EPOCHS:
                sampler.set_epoch(epoch)
                result[f"{key}_{epoch}"] = np.array(list(sampler))
                assert len(sampler) == len(result[f"{key}_{epoch}"])
    stream = RepeatFactorSampler(fake_dataset(LABELS, 10), oversample_thr=0.2, seed=SEED,
                                 infinite=True)
    result["infinite"] = np.array(list(itertools.islice(stream, 200)))
    wrapper = RepeatFactorDataset(fake_dataset(LABELS, 10), oversample_thr=0.2)
    result["wrapper_seed"] = wrapper.seed
    result["wrapper_table"] = wrapper.epoch_indices(1)
    np.savez(Path(out_dir) / f"rank{rank}.npz", **result)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, np.ndarray]]:
    """What each of the two ranks loaded."""
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_run_rank, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD_SIZE, join=True)
    return [dict(np.load(tmp / f"rank{rank}.npz")) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("name", ["repeat_factor", "repeat_factor_ceil", "undersample",
                                  "class_aware"])
def test_rank_shards_are_disjoint_cover_the_epoch_and_are_reproducible(
        shards: list[dict[str, np.ndarray]], name: str) -> None:
    # The reference: the same sampler, built here in a third process with the same seed.
    reference = make_samplers(SEED)[name]
    for epoch in EPOCHS:
        parts = [s[f"{name}_seeded_{epoch}"] for s in shards]
        epoch_draws = reference.epoch_indices(epoch)
        total = -(-len(epoch_draws) // WORLD_SIZE) * WORLD_SIZE
        assert [len(p) for p in parts] == [total // WORLD_SIZE] * WORLD_SIZE
        # Position k of the padded epoch goes to rank k % W: disjoint and covering.
        merged = np.empty(total, dtype=np.int64)
        for rank, part in enumerate(parts):
            merged[rank::WORLD_SIZE] = part
        np.testing.assert_array_equal(merged[:len(epoch_draws)], epoch_draws)
        np.testing.assert_array_equal(merged[len(epoch_draws):],
                                      epoch_draws[:total - len(epoch_draws)])
    # set_epoch: another order, and (except with ceil) another draw.
    first, second = reference.epoch_indices(0), reference.epoch_indices(1)
    assert first.tolist() != second.tolist()
    if name != "repeat_factor_ceil":
        assert np.bincount(first, minlength=101).tolist() != \
            np.bincount(second, minlength=101).tolist()


@pytest.mark.parametrize("name", ["repeat_factor", "undersample", "class_aware"])
def test_broadcast_seed_gives_every_rank_the_same_epoch(
        shards: list[dict[str, np.ndarray]], name: str) -> None:
    key = f"{name}_broadcast"
    assert shards[0][f"{key}_seed"] == shards[1][f"{key}_seed"]
    sampler = make_samplers(int(shards[0][f"{key}_seed"]))[name]
    for epoch in EPOCHS:
        merged = np.empty(2 * len(shards[0][f"{key}_{epoch}"]), dtype=np.int64)
        merged[0::2], merged[1::2] = shards[0][f"{key}_{epoch}"], shards[1][f"{key}_{epoch}"]
        np.testing.assert_array_equal(merged[:len(sampler.epoch_indices(epoch))],
                                      sampler.epoch_indices(epoch))


def test_infinite_stream_is_sharded_epoch_after_epoch(
        shards: list[dict[str, np.ndarray]]) -> None:
    sampler = RepeatFactorSampler(fake_dataset(LABELS, 10), oversample_thr=0.2, seed=SEED)
    for rank in range(WORLD_SIZE):
        expected = np.concatenate(
            [shard(sampler.epoch_indices(e), rank, WORLD_SIZE) for e in range(4)])[:200]
        np.testing.assert_array_equal(shards[rank]["infinite"], expected)


def test_wrapper_tables_agree_across_ranks(shards: list[dict[str, np.ndarray]]) -> None:
    assert shards[0]["wrapper_seed"] == shards[1]["wrapper_seed"]
    np.testing.assert_array_equal(shards[0]["wrapper_table"], shards[1]["wrapper_table"])
