"""Decoupled training (cRT) with one command: stage 1 trains the detector, stage 2 retrains its
classifier alone from the stage-1 checkpoint.

The stage-2 config names its stage-1 config (``stage1_config``) and freezes everything but the
classifier (``FreezeExceptHook``). Stage 1 trains in ``{work_dir}/stage1``, stage 2 in
``{work_dir}/stage2``; ``{work_dir}/decoupled.json`` reports both. Run the command again to
resume: a finished stage is never retrained (see :mod:`mmimb.strategies.decoupled`).

Example::

    python tools/train_decoupled.py configs/faster_rcnn/crt_faster-rcnn_r18tiny_fpn_1k_ltsynth.py
"""

import argparse
import os.path as osp
import sys
from pathlib import Path

from mmengine.config import DictAction

import mmimb  # noqa: F401  (registers mmimb and lets torch load mmengine checkpoints)
from mmimb.strategies import run_decoupled

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="stage-2 config")
    parser.add_argument("--stage1-checkpoint",
                        help="a trained stage-1 checkpoint: skip stage 1 and start from it")
    parser.add_argument("--work-dir", help="the folder of both stages (default: "
                                           "./work_dirs/{config name})")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="settings merged into both stages' configs, key=value pairs")
    args = parser.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_decoupled(args.config, args.work_dir, ROOT, args.stage1_checkpoint, args.cfg_options,
                  echo=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
