"""Set-up time, peak memory and epoch-length error of repeat-factor sampling at LVIS scale and
at Objects365 scale, against mmengine's ``ClassBalancedDataset``.

Data: synthetic annotation sets whose per-class image counts follow LVIS v1 train's marginals
(``../shared/data/lvis_v1_train_cat_info.json``, read in place), scaled to ``N`` images: class
``c`` is put on ``max(1, round(n_c * N / 100170))`` images drawn uniformly, with
``1 + Poisson(m_c - 1)`` boxes on each, ``m_c`` being LVIS's boxes per image of class ``c``.
Images that draw no class are background-only, as in LVIS.

Every variant wraps the same dataset object: a light ``BaseDataset`` whose ``get_data_info``
builds an image's instance list from a numpy CSR array (no record to unpickle), and whose
``get_cat_ids`` returns the labels of ``get_data_info``, as mmdet's ``BaseDetDataset`` does.
mmengine reads ``get_cat_ids`` twice per image; :mod:`mmimb.stats` reads ``get_data_info`` once.

* ``mmengine ClassBalancedDataset``: ``ceil`` rounding, Python lists;
* ``mmimb RepeatFactorDataset``: ``full_init`` and the first epoch's table (stochastic rounding);
* ``mmimb RepeatFactorSampler``: construction and the first epoch's draw and shuffle;
* ``mmimb, labels given``: the same computation from an ``ImageLabels`` already in memory, i.e.
  the set-up of a dataset that hands over its labels in bulk instead of image by image.

Time: the best of ``--repeats`` runs, without tracing. Memory: the peak that ``tracemalloc``
sees during one more run (it traces Python objects and numpy buffers alike), above what was
allocated before, and what stays allocated while the result lives ("kept"). Ratios are taken
within this one run.

Epoch length: ``sum_i r_i`` is the expected epoch length. For each rounding mode, the length of
``RepeatFactorSampler``'s epochs relative to it (stochastic: the mean and the largest deviation
over ``--epochs`` epochs), and the fixed length of the wrapper and of mmengine's dataset.

Usage::

    python benchmarks/sampling.py                          # 100000 and 1700000 images
    python benchmarks/sampling.py --sizes 100000 --repeats 3 --json sampling.json
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mmengine.dataset import BaseDataset, ClassBalancedDataset

from mmimb.datasets.wrappers import RepeatFactorDataset
from mmimb.samplers import RepeatFactorSampler, epoch_rng, repeat_indices, round_factors
from mmimb.stats import (
    ClassStats,
    ImageLabels,
    class_repeat_factors,
    image_repeat_factors,
)

CAT_INFO = Path(__file__).resolve().parents[2] / "shared" / "data" / "lvis_v1_train_cat_info.json"
LVIS_TRAIN_IMAGES = 100_170
MIB = 2**20


def load_marginals(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """LVIS's ``(image_count int64[C], instance_count int64[C], names)``, by category id."""
    cats = sorted(json.loads(path.read_text()), key=lambda c: c["id"])
    return (np.array([c["image_count"] for c in cats], dtype=np.int64),
            np.array([c["instance_count"] for c in cats], dtype=np.int64),
            tuple(c["name"] for c in cats))


def synthetic_labels(num_images: int, image_counts: np.ndarray, instance_counts: np.ndarray,
                     seed: int = 0) -> ImageLabels:
    """A random labelling with LVIS's per-class image counts, scaled to ``num_images``."""
    rng = np.random.default_rng(seed)
    scaled = np.maximum(1, np.rint(image_counts * num_images / LVIS_TRAIN_IMAGES)).astype(int)
    images = np.concatenate([rng.choice(num_images, n, replace=False) for n in scaled])
    classes = np.repeat(np.arange(len(scaled)), scaled)
    boxes = 1 + rng.poisson(np.repeat(instance_counts / image_counts - 1, scaled))
    images, classes = np.repeat(images, boxes), np.repeat(classes, boxes)
    order = np.argsort(images, kind="stable")
    offsets = np.zeros(num_images + 1, dtype=np.int64)
    np.cumsum(np.bincount(images, minlength=num_images), out=offsets[1:])
    return ImageLabels(classes[order].astype(np.int64), offsets, len(scaled))


class CSRDataset(BaseDataset):
    """A loaded detection dataset whose annotations are a numpy CSR array (no records)."""

    def __init__(self, labels: ImageLabels, classes: tuple[str, ...]) -> None:
        self._labels, self._offsets = labels.labels, labels.offsets
        self._metainfo = {"classes": classes}
        self._fully_initialized = True

    def full_init(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get_data_info(self, idx: int) -> dict[str, Any]:
        labels = self._labels[self._offsets[idx]:self._offsets[idx + 1]].tolist()
        return {"instances": [{"bbox_label": c} for c in labels]}

    def get_cat_ids(self, idx: int) -> list[int]:
        """As mmdet's ``BaseDetDataset.get_cat_ids``: the labels of ``get_data_info``."""
        return [instance["bbox_label"] for instance in self.get_data_info(idx)["instances"]]

    def __getitem__(self, idx: int) -> int:
        return idx


def numpy_setup(labels: ImageLabels, thr: float) -> np.ndarray:
    """The wrapper's set-up after reading: factors, then the first epoch's table."""
    factors = image_repeat_factors(
        labels, class_repeat_factors(ClassStats.from_image_labels(labels), thr))
    return repeat_indices(round_factors(factors, "stochastic", epoch_rng(0, 0)))


def measure(build: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Best time over ``repeats`` untraced runs; traced peak and kept memory of one more run."""
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = build()
        times.append(time.perf_counter() - start)
        del result
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = build()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return {"time_s": min(times), "peak_mib": (peak - base) / MIB,
            "kept_mib": (kept - base) / MIB}


def run_size(num_images: int, thr: float, repeats: int, epochs: int,
             marginals: tuple[np.ndarray, np.ndarray, tuple[str, ...]]) -> dict[str, Any]:
    labels = synthetic_labels(num_images, marginals[0], marginals[1])
    dataset = CSRDataset(labels, marginals[2])

    def wrapper() -> RepeatFactorDataset:
        out = RepeatFactorDataset(dataset, oversample_thr=thr, seed=0)
        out.epoch_indices()
        return out

    def sampler() -> RepeatFactorSampler:
        out = RepeatFactorSampler(dataset, oversample_thr=thr, seed=0)
        out.epoch_indices()
        return out

    variants: dict[str, Callable[[], Any]] = {
        "mmengine ClassBalancedDataset": lambda: ClassBalancedDataset(dataset, thr),
        "mmimb RepeatFactorDataset": wrapper,
        "mmimb RepeatFactorSampler": sampler,
        "mmimb, labels given": lambda: numpy_setup(labels, thr),
    }
    results = {name: measure(build, repeats) for name, build in variants.items()}

    built = sampler()
    factors = built.repeat_factors
    expected = float(factors.sum())
    lengths = np.array([len(built.epoch_indices(e)) for e in range(epochs)])
    errors = {
        "stochastic (mean)": lengths.mean() / expected - 1,
        "stochastic (worst epoch)": float(np.abs(lengths / expected - 1).max()),
        **{mode: round_factors(factors, mode).sum() / expected - 1
           for mode in ("ceil", "floor", "round")},
        "wrapper (fixed)": len(wrapper()) / expected - 1,
        "mmengine": len(ClassBalancedDataset(dataset, thr)) / expected - 1,
    }
    return {"num_images": num_images, "num_boxes": len(labels.labels),
            "num_classes": labels.num_classes, "thr": thr, "expected_length": expected,
            "epochs": epochs, "setup": results,
            "epoch_length_error": {k: float(v) for k, v in errors.items()}}


def print_size(result: dict[str, Any]) -> None:
    print(f"\nN = {result['num_images']:,} images, {result['num_boxes']:,} boxes, "
          f"{result['num_classes']} classes, t = {result['thr']}, "
          f"sum of repeat factors = {result['expected_length']:,.1f}")
    setup = result["setup"]
    ref = setup["mmengine ClassBalancedDataset"]
    print(f"{'variant':32s} {'set-up s':>9s} {'x faster':>9s} {'peak MiB':>9s} "
          f"{'x of ref':>9s} {'kept MiB':>9s}")
    for name, row in setup.items():
        print(f"{name:32s} {row['time_s']:9.3f} {ref['time_s'] / row['time_s']:9.1f} "
              f"{row['peak_mib']:9.1f} {row['peak_mib'] / ref['peak_mib']:9.3f} "
              f"{row['kept_mib']:9.1f}")
    print(f"epoch length vs sum of factors ({result['epochs']} epochs for stochastic):")
    for name, err in result["epoch_length_error"].items():
        print(f"  {name:26s} {100 * err:+8.3f} %")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_700_000],
                        help="numbers of images")
    parser.add_argument("--thr", type=float, default=1e-3, help="oversample_thr (LVIS: 1e-3)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per variant")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs drawn to measure the stochastic epoch length")
    parser.add_argument("--cat-info", type=Path, default=CAT_INFO,
                        help="LVIS v1 category info with image_count and instance_count")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    marginals = load_marginals(args.cat_info)
    results = []
    for size in args.sizes:
        results.append(run_size(size, args.thr, args.repeats, args.epochs, marginals))
        print_size(results[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
