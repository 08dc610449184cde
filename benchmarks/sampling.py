"""Set-up time, peak memory and epoch-length error of repeat-factor sampling at LVIS scale and
at Objects365 scale, against mmengine's ``ClassBalancedDataset``.

Data: synthetic annotation sets whose per-class image counts follow LVIS v1 train's marginals
(``../shared/data/lvis_v1_train_cat_info.json``, read in place), scaled to ``N`` images: class
``c`` is put on ``max(1, round(n_c * N / 100170))`` images drawn uniformly, with
``1 + Poisson(m_c - 1)`` boxes on each, ``m_c`` being LVIS's boxes per image of class ``c``.
Images that draw no class are background-only, as in LVIS.

Every variant reads the same dataset object, held as mmdet holds a loaded ``CocoDataset``:
records pickled one by one into mmengine's serialised storage (:class:`SerializedDetDataset`).
mmengine reads ``get_cat_ids`` twice per image, unpickling the record each time;
:mod:`mmimb.stats` unpickles each record once, and caches the labels it read under a hash of the
records' bytes (:mod:`mmimb.label_cache`), so a later set-up on the same data (every rank of a
later run, the next experiment, a resumed run) hashes instead of unpickling.

* ``mmengine ClassBalancedDataset``: ``ceil`` rounding, Python lists;
* ``mmimb RepeatFactorDataset, first run``: ``full_init`` and the first epoch's table
  (stochastic rounding) with an empty label cache: every record read, labels hashed and
  written to the cache;
* ``mmimb RepeatFactorDataset, cache off``: the same with ``MMIMB_LABEL_CACHE=0``;
* ``mmimb RepeatFactorDataset, labels cached``: the same once the cache holds the labels;
* ``mmimb RepeatFactorSampler, labels cached``: construction and the first epoch's draw and
  shuffle, cache filled;
* ``mmimb, labels in memory``: the computation alone, from an ``ImageLabels`` in memory.

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
import os
import pickle
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mmdet.datasets import BaseDetDataset
from mmengine.dataset import ClassBalancedDataset

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


class SerializedDetDataset(BaseDetDataset):
    """A loaded mmdet detection dataset, held exactly as ``CocoDataset`` holds one.

    The records are what ``CocoDataset.parse_data_info`` makes of a box-only annotation file
    (``img_path``, ``img_id``, ``seg_map_path``, ``height``, ``width`` and one
    ``{'ignore_flag', 'bbox', 'bbox_label'}`` per box), pickled one by one into mmengine's
    serialised storage (``serialize_data=True``, every mmdet dataset's default), as
    ``BaseDataset._serialize_data`` does. They are generated and pickled in chunks, so
    millions of records never exist as Python objects at once. ``get_data_info`` and
    ``get_cat_ids`` are mmengine's and mmdet's own.
    """

    def __init__(self, labels: ImageLabels, classes: tuple[str, ...]) -> None:
        self._source = labels
        super().__init__(ann_file="", metainfo={"classes": classes}, pipeline=[],
                         lazy_init=True)
        self.full_init()

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        labels, offsets = self._source.labels, self._source.offsets
        rng = np.random.default_rng(1)
        chunks, sizes = [], []
        for start in range(0, self._source.num_images, 10_000):
            stop = min(start + 10_000, self._source.num_images)
            lo, hi = int(offsets[start]), int(offsets[stop])
            xy = rng.uniform(0, 560, (hi - lo, 2))
            boxes = np.round(np.hstack([xy, xy + rng.uniform(4, 80, (hi - lo, 2))]), 1)
            box_list, classes = boxes.tolist(), labels[lo:hi].tolist()
            records = [pickle.dumps({
                "img_path": f"data/lvis/train2017/{i:012d}.jpg", "img_id": i,
                "seg_map_path": None, "height": 480, "width": 640,
                "instances": [{"ignore_flag": 0, "bbox": box_list[k], "bbox_label": classes[k]}
                              for k in range(int(offsets[i]) - lo, int(offsets[i + 1]) - lo)],
            }, protocol=4) for i in range(start, stop)]
            sizes.extend(len(r) for r in records)
            chunks.append(b"".join(records))
        self.data_bytes = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        self.data_address = np.cumsum(np.asarray(sizes, dtype=np.int64))
        self.data_list = []
        self._fully_initialized = True


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
    dataset = SerializedDetDataset(labels, marginals[2])
    cache_root = tempfile.TemporaryDirectory(prefix="mmimb-bench-cache-")
    filled_cache = tempfile.mkdtemp(dir=cache_root.name)

    def with_cache(cache: str | None, build: Callable[[], Any]) -> Callable[[], Any]:
        """``build`` run with the label cache in ``cache`` (a fresh folder if ``'new'``)."""
        def run() -> Any:
            os.environ["MMIMB_LABEL_CACHE"] = "0" if cache is None else "1"
            os.environ["MMIMB_CACHE_DIR"] = (tempfile.mkdtemp(dir=cache_root.name)
                                             if cache == "new" else cache or "")
            return build()
        return run

    def wrapper() -> RepeatFactorDataset:
        out = RepeatFactorDataset(dataset, oversample_thr=thr, seed=0)
        out.epoch_indices()
        return out

    def sampler() -> RepeatFactorSampler:
        out = RepeatFactorSampler(dataset, oversample_thr=thr, seed=0)
        out.epoch_indices()
        return out

    with_cache(filled_cache, sampler)()  # fills the cache
    variants: dict[str, Callable[[], Any]] = {
        "mmengine ClassBalancedDataset": lambda: ClassBalancedDataset(dataset, thr),
        "mmimb RepeatFactorDataset, first run": with_cache("new", wrapper),
        "mmimb RepeatFactorDataset, cache off": with_cache(None, wrapper),
        "mmimb RepeatFactorDataset, labels cached": with_cache(filled_cache, wrapper),
        "mmimb RepeatFactorSampler, labels cached": with_cache(filled_cache, sampler),
        "mmimb, labels in memory": lambda: numpy_setup(labels, thr),
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
    cache_root.cleanup()
    return {"num_images": num_images, "num_boxes": len(labels.labels),
            "record_mib": dataset.data_bytes.nbytes / MIB,
            "num_classes": labels.num_classes, "thr": thr, "expected_length": expected,
            "epochs": epochs, "setup": results,
            "epoch_length_error": {k: float(v) for k, v in errors.items()}}


def print_size(result: dict[str, Any]) -> None:
    print(f"\nN = {result['num_images']:,} images, {result['num_boxes']:,} boxes, "
          f"{result['num_classes']} classes, {result['record_mib']:,.0f} MiB of records, "
          f"t = {result['thr']}, "
          f"sum of repeat factors = {result['expected_length']:,.1f}")
    setup = result["setup"]
    ref = setup["mmengine ClassBalancedDataset"]
    print(f"{'variant':42s} {'set-up s':>9s} {'x faster':>9s} {'peak MiB':>9s} "
          f"{'x of ref':>9s} {'kept MiB':>9s}")
    for name, row in setup.items():
        print(f"{name:42s} {row['time_s']:9.3f} {ref['time_s'] / row['time_s']:9.1f} "
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
