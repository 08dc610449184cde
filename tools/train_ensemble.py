"""Train a balanced ensemble (EasyEnsemble) of K detectors and evaluate their fused predictions.

Every member trains the config with its own seed of the undersampling sampler, in
``{work_dir}/member{k}``, one after another; then their predictions on the evaluation set are
fused (weighted boxes fusion by default, ``ensemble.fusion`` in the config) and evaluated with
the config's ``LongTailMetric``; ``{work_dir}/ensemble.json`` reports it. Run the command again
to resume: finished members are never retrained (see :mod:`mmimb.strategies.ensemble`).

Example::

    python tools/train_ensemble.py \\
        configs/faster_rcnn/easyensemble_faster-rcnn_r18tiny_fpn_1k_ltsynth.py --members 3
"""

import argparse
import os.path as osp
import sys
from pathlib import Path

from mmengine.config import DictAction

import mmimb  # noqa: F401  (registers mmimb and lets torch load mmengine checkpoints)
from mmimb.strategies import run_ensemble

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="ensemble config (trains with UndersampleSampler)")
    parser.add_argument("--members", type=int,
                        help="number of members K >= 2 (default: ensemble.members of the config)")
    parser.add_argument("--work-dir", help="the ensemble's folder (default: "
                                           "./work_dirs/{config name})")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="settings merged into every member's config, key=value pairs such "
                             "as train_cfg.max_iters=100 or ensemble.fusion.method=nms")
    args = parser.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_ensemble(args.config, args.work_dir, ROOT, args.members, args.cfg_options,
                 echo=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
