"""Generate the embedded synthetic long-tailed detection dataset (COCO format)."""

import argparse
import json
from dataclasses import fields

from mmimb.datasets.synthetic import SyntheticConfig, generate, train_counts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/lt_synth", help="output folder")
    for f in fields(SyntheticConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true",
                                help="write instance masks (COCO RLE) beside the boxes"
                                if f.name == "with_masks" else None)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    return parser.parse_args()


def main() -> None:
    args = vars(parse_args())
    out = args.pop("out")
    cfg = SyntheticConfig(**args)
    root = generate(out, cfg)
    counts = train_counts(cfg)
    print(f"synthetic dataset in {root}: training instances per class {counts.tolist()} "
          f"(head:tail {counts[0] / counts[-1]:.0f}:1)")
    print(json.dumps(json.loads((root / "meta.json").read_text())))


if __name__ == "__main__":
    main()
