"""Training-pipeline throughput with and without mmimb's rare-class transforms.

Each variant is a training set built from a config (``train_dataloader.dataset``) with its whole
pipeline, from ``LoadImageFromFile`` to ``PackDetInputs``, on the embedded long-tail dataset
(128 x 128 PNG images):

* ``baseline``: the demo RetinaNet's pipeline;
* ``+ RareClassCopyPaste``: ``configs/retinanet/rarecopypaste_*`` (1-2 crops into half of the
  images; ``blend='rect'``, the default), and ``..., soft`` with ``blend='soft'``;
* ``+ RarityConditionedApply``: ``configs/retinanet/rarityaug_*`` (zoom + HSV jitter on images
  whose rarest class is rare or, half of the time, common);
* ``+ RarityConditionedApply, never applied``: the same with every probability 0: the cost of
  the wrapper itself (reading the labels, one draw);
* ``inner transforms, always``: the zoom + jitter applied to every image, the cost the wrapper
  saves by skipping head-class images;
* ``+ RareClassCopyPaste, matte`` and ``..., instance mixing``: the copy-paste config with
  ``blend='matte'`` (GrabCut foreground estimates, made once per crop when the bank is built: the
  set-up column and the per-crop milliseconds printed below the table) or with ``mix_prob=0.5``;
* ``masks loaded`` and ``+ RareClassCopyPaste, mask, masks kept``: ``configs/faster_rcnn/
  maskpaste_*`` on the synthetic set with instance masks, without the transform and with it
  keeping the masks (for a model with a mask head); the ratio of the latter is to ``masks
  loaded``, the same pipeline without copy-paste (reading and carrying masks is the cost of any
  mask-based pipeline, not of the paste);
* ``+ RareClassCopyPaste, mask``: the config as it is (``keep_masks=False``: the box detector
  loads masks for the paste alone, which drops them), with its ratio to ``baseline``, the
  box-only pipeline a user of a box detector would otherwise run.

The Faster R-CNN configs have the same pipelines. Before timing, every transform builds its bank
or reads its statistics (reported separately: a one-off cost per process) and 20 images warm up.
Then ``--rounds`` rounds each run the same ``--num`` images (a seeded permutation) through every
variant, interleaved in chunks of :data:`CHUNK` images (chunk 1 through every variant, then
chunk 2 ...), in one process, so that a change of the machine's load hits every variant alike.
The table gives each variant's median images/s over rounds and the median over rounds of its
ratio to the baseline's rate in the same round (with the range). Time is this process's CPU
time, so that other processes on a shared machine do not count (one thread: it equals the wall
time of a worker with a core to itself). One process, set up like a
data loader worker under mmengine (one torch thread, no OpenCV threads; with more, the tiny
tensor ops of mmdet's transforms wait on idle threads): the per-image cost the transforms add to
each worker.

``--resize 1333 800`` resizes every variant's images to COCO's training scale: the pipelines
then cost what they cost on COCO-sized images, and the transforms (placed before ``Resize`` in
the configs) cost the same as at 128 x 128.

Usage::

    python benchmarks/pipeline_speed.py
    python benchmarks/pipeline_speed.py --resize 1333 800
    python benchmarks/pipeline_speed.py --num 500 --rounds 7 --json pipeline_speed.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from mmdet.registry import DATASETS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import set_random_seed

import mmimb  # noqa: F401  (registers the transforms)

REPO = Path(__file__).resolve().parents[1]
BASELINE = "configs/retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py"
COPY_PASTE = "configs/retinanet/rarecopypaste_retinanet_r18tiny_fpn_2k_ltsynth.py"
RARITY = "configs/retinanet/rarityaug_retinanet_r18tiny_fpn_2k_ltsynth.py"
MASK_PASTE = "configs/faster_rcnn/maskpaste_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"
#: Each variant's rates are divided by those of this variant in the same round.
REFERENCE = {"+ RareClassCopyPaste, mask, masks kept": "masks loaded"}


def dataset_cfg(config: str) -> dict[str, Any]:
    return Config.fromfile(str(REPO / config)).train_dataloader.dataset.to_dict()


def with_resize(cfg: dict[str, Any], scale: list[int] | None) -> dict[str, Any]:
    """``cfg`` whose ``Resize`` steps resize to ``scale`` (``None``: unchanged)."""
    if scale is None:
        return cfg
    pipeline = [dict(t, scale=tuple(scale)) if t["type"] == "Resize" else t
                for t in cfg["pipeline"]]
    return dict(cfg, pipeline=pipeline)


def never_applied(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` whose ``RarityConditionedApply`` never applies its transforms (its own cost)."""
    pipeline = [dict(t, group_probs=(0.0, 0.0, 0.0)) if t["type"] == "RarityConditionedApply"
                else t for t in cfg["pipeline"]]
    return dict(cfg, pipeline=pipeline)


def with_paste(cfg: dict[str, Any], **options: Any) -> dict[str, Any]:
    """``cfg`` whose ``RareClassCopyPaste`` has ``options``; ``None`` removes the transform."""
    pipeline = [dict(t, **options) if t["type"] == "RareClassCopyPaste" else t
                for t in cfg["pipeline"] if t["type"] != "RareClassCopyPaste" or options]
    return dict(cfg, pipeline=pipeline)


def always_inner(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every ``RarityConditionedApply`` replaced by its transforms."""
    pipeline: list[dict[str, Any]] = []
    for t in cfg["pipeline"]:
        pipeline += t["transforms"] if t["type"] == "RarityConditionedApply" else [t]
    return dict(cfg, pipeline=pipeline)


def build(cfg: dict[str, Any]) -> tuple[Any, float]:
    """The dataset and the seconds its transforms took to build banks / read statistics."""
    dataset = DATASETS.build(cfg)
    start = time.perf_counter()
    for t in dataset.pipeline.transforms:
        if hasattr(t, "full_init"):
            t.full_init()
    return dataset, time.perf_counter() - start


CHUNK = 10


def timed_round(datasets: dict[str, Any], indices: np.ndarray) -> dict[str, float]:
    """Images/s of every dataset over ``indices``, the datasets interleaved chunk by chunk."""
    seconds = dict.fromkeys(datasets, 0.0)
    for start in range(0, len(indices), CHUNK):
        chunk = indices[start:start + CHUNK]
        for name, dataset in datasets.items():
            t0 = time.process_time()
            for i in chunk:
                dataset[int(i)]
            seconds[name] += time.process_time() - t0
    return {name: len(indices) / s for name, s in seconds.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=300, help="images per round and variant")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--seed", type=int, default=0, help="seeds the images and the draws")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("W", "H"),
                        help="resize to this scale instead of the configs' 128 x 128, e.g. "
                             "1333 800 for COCO-sized training images")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)   # what torch does in a data loader worker
    cv2.setNumThreads(0)       # what mmengine's set_multi_processing does
    init_default_scope("mmdet")
    set_random_seed(args.seed)
    variants = {
        "baseline": dataset_cfg(BASELINE),
        "+ RareClassCopyPaste": dataset_cfg(COPY_PASTE),
        "+ RareClassCopyPaste, soft": with_paste(dataset_cfg(COPY_PASTE), blend="soft"),
        "+ RarityConditionedApply": dataset_cfg(RARITY),
        "+ RarityConditionedApply, never applied": never_applied(dataset_cfg(RARITY)),
        "inner transforms, always": always_inner(dataset_cfg(RARITY)),
        "+ RareClassCopyPaste, matte": with_paste(dataset_cfg(COPY_PASTE), blend="matte"),
        "+ RareClassCopyPaste, instance mixing": with_paste(dataset_cfg(COPY_PASTE),
                                                            mix_prob=0.5),
        "masks loaded": with_paste(dataset_cfg(MASK_PASTE)),
        "+ RareClassCopyPaste, mask, masks kept": with_paste(dataset_cfg(MASK_PASTE),
                                                             keep_masks=True),
        "+ RareClassCopyPaste, mask": dataset_cfg(MASK_PASTE),
    }
    variants = {name: with_resize(cfg, args.resize) for name, cfg in variants.items()}
    built = {name: build(cfg) for name, cfg in variants.items()}
    indices = np.random.default_rng(args.seed).permutation(len(built["baseline"][0]))[:args.num]
    datasets = {name: dataset for name, (dataset, _) in built.items()}
    timed_round(datasets, indices[:20])
    rounds = [timed_round(datasets, indices) for _ in range(args.rounds)]
    rates = {name: [r[name] for r in rounds] for name in variants}
    ratios = {name: [r[name] / r[REFERENCE.get(name, "baseline")] for r in rounds]
              for name in variants}

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    size = "x".join(map(str, args.resize)) if args.resize else "128x128"
    print(f"{len(indices)} images x {args.rounds} rounds, 128x128 PNG resized to {size}, "
          f"one process\n")
    print("| pipeline | images/s (median) | ratio (median) | ratio range | ratio to | set-up (s) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in variants:
        rate, ratio, setup = float(np.median(rates[name])), float(np.median(ratios[name])), \
            built[name][1]
        print(f"| {name} | {rate:.0f} | {ratio:.2f} | {min(ratios[name]):.2f} - "
              f"{max(ratios[name]):.2f} | {REFERENCE.get(name, 'baseline')} | {setup:.2f} |")
        rows.append(dict(pipeline=name, reference=REFERENCE.get(name, "baseline"),
                         images_per_s=rates[name], ratios=ratios[name],
                         median_images_per_s=rate, median_ratio=ratio, setup_s=setup))
    bank = next(t for t in built["+ RareClassCopyPaste"][0].pipeline.transforms
                if hasattr(t, "bank")).bank
    print(f"\ncrop bank: {len(bank)} crops of {int((bank.class_probs > 0).sum())} classes, "
          f"{bank.nbytes / 1024:.0f} KiB")
    matte = next(t for t in built["+ RareClassCopyPaste, matte"][0].pipeline.transforms
                 if hasattr(t, "bank")).bank
    matte_ms = matte.matte_ms if matte.matte_ms is not None else np.zeros(0)
    print(f"matte estimates: {len(matte_ms)} crops, median {np.median(matte_ms):.1f} ms, "
          f"total {matte_ms.sum() / 1000:.2f} s (once per crop, when the bank is built), "
          f"{matte.matte_fallbacks} degenerate (pasted as soft rectangles)")
    if args.json:
        args.json.write_text(json.dumps(dict(
            argv=sys.argv, rows=rows, bank_crops=len(bank), bank_bytes=bank.nbytes,
            matte_ms=matte_ms.tolist(), matte_fallbacks=matte.matte_fallbacks), indent=2))


if __name__ == "__main__":
    main()
