"""Evaluate a checkpoint with the MMEngine runner (mmdet's ``tools/test.py``, plus mmimb)."""

import argparse
import os

from mmdet.evaluation import DumpDetResults

import mmimb  # noqa: F401  (registers mmimb and lets torch load mmengine checkpoints)
from mmimb.tool_utils import add_common_arguments, build_runner, load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a detector checkpoint")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--out", help="dump predictions to this pickle file")
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.out is not None and not args.out.endswith((".pkl", ".pickle")):
        parser.error(f"--out must be a .pkl file, got {args.out!r}")
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    runner = build_runner(cfg, strict_checkpoint=True)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()


if __name__ == "__main__":
    main()
