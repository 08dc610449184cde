"""Generate the embedded synthetic long-tailed detection dataset (COCO format)."""

import argparse
import json
from dataclasses import fields

from mmimb.datasets.synthetic import SyntheticConfig, generate, train_counts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/lt_synth", help="output folder")
    for f in fields(SyntheticConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                            default=f.default)
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
