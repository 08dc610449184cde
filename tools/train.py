"""Train a detector with the MMEngine runner (mmdet's ``tools/train.py``, plus mmimb)."""

import argparse
import os

from mmengine.config import Config

import mmimb  # noqa: F401  (registers mmimb and lets torch load mmengine checkpoints)
from mmimb.tool_utils import add_common_arguments, apply_resume, build_runner, load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a detector")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--amp", action="store_true", help="enable automatic mixed precision")
    parser.add_argument(
        "--resume", nargs="?", type=str, const="auto",
        help="resume from this checkpoint, or from the latest one in the work dir when no "
             "path is given (none there: a warning, and a new training starts)")
    add_common_arguments(parser)
    args = parser.parse_args()
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def build_config(args: argparse.Namespace) -> Config:
    """Merge the command-line options into the config."""
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    apply_resume(cfg, args.resume)
    return cfg


def main() -> None:
    cfg = build_config(parse_args())
    build_runner(cfg, strict_checkpoint=bool(cfg.get("resume"))).train()


if __name__ == "__main__":
    main()
