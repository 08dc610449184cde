"""Write a PNG grid of augmented training samples of a config, with boxes and class names.

    python tools/browse_augmented.py CONFIG --out grid.png [--num 16] [--seed 0]
        [--mattes mattes.png [--matte-freq-thr 0.1] [--matte-crops 4]]

``--mattes`` also writes the GrabCut mattes that ``RareClassCopyPaste(blend='matte')`` would
estimate for the crops of the config's training set (each crop beside its matte; a red frame
marks a degenerate estimate, pasted as a soft rectangle), and prints the number of fallbacks
and the median cost of one estimate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope

import mmimb  # noqa: F401  (registers mmimb's transforms)
from mmimb.transforms import crop_bank
from mmimb.transforms._common import build_annotation_dataset
from mmimb.transforms.visualize import write_augmented_grid


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--num", type=int, default=16, help="number of samples")
    parser.add_argument("--seed", type=int, default=0,
                        help="chooses the images and seeds the augmentation")
    parser.add_argument("--tile", type=int, default=256, help="side of a tile in pixels")
    parser.add_argument("--cols", type=int, default=None, help="columns (default sqrt(num))")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings of the config, key=value pairs")
    parser.add_argument("--mattes", default=None,
                        help="also write a PNG of the estimated mattes of the crop bank")
    parser.add_argument("--matte-freq-thr", type=float, default=0.1,
                        help="classes whose image frequency is at most this get crops")
    parser.add_argument("--matte-crops", type=int, default=4, help="crops per class")
    return parser.parse_args()


def write_mattes(args: argparse.Namespace) -> None:
    """Build a matte crop bank of the config's training set and draw its mattes."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    dataset = build_annotation_dataset(cfg.train_dataloader.dataset.to_dict())
    bank = crop_bank.crop_bank_from_dataset(
        dataset, freq_thr=args.matte_freq_thr, max_crops_per_class=args.matte_crops,
        seed=args.seed, matte=True)
    out = Path(args.mattes)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), crop_bank.draw_mattes(bank))
    names = [bank.classes[c] if c < len(bank.classes) else str(c) for c in bank.labels]
    print(f"wrote {out}: {len(bank)} crops ({', '.join(sorted(set(names)))}), "
          f"{bank.matte_fallbacks} degenerate, median {np.median(bank.matte_ms):.1f} ms per "
          f"matte")


def main() -> None:
    args = parse_args()
    path = write_augmented_grid(args.config, args.out, num=args.num, seed=args.seed,
                                tile=args.tile, cols=args.cols, cfg_options=args.cfg_options)
    print(f"wrote {path}")
    if args.mattes:
        write_mattes(args)


if __name__ == "__main__":
    main()
