"""What ``tools/train.py`` and ``tools/test.py`` share: config loading and runner building."""

from __future__ import annotations

import argparse
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``."""
    parser.add_argument("--work-dir", help="the folder for logs, checkpoints and reports")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction,
        help="override settings of the config, key=value pairs such as "
             "train_cfg.max_iters=100")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"],
                        default="none", help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the common command-line options merged in.

    The work folder defaults to ``./work_dirs/{config name}``, as in mmdet.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    return cfg


def build_runner(cfg: Config) -> Runner:
    """The default MMEngine runner, or the one the config names in ``runner_type``."""
    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
