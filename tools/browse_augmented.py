"""Write a PNG grid of augmented training samples of a config, with boxes and class names.

    python tools/browse_augmented.py CONFIG --out grid.png [--num 16] [--seed 0]
"""

from __future__ import annotations

import argparse

from mmengine.config import DictAction

import mmimb  # noqa: F401  (registers mmimb's transforms)
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
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    path = write_augmented_grid(args.config, args.out, num=args.num, seed=args.seed,
                                tile=args.tile, cols=args.cols, cfg_options=args.cfg_options)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
