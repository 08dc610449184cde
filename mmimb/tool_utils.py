"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, checks, runner building.

Where mmengine passes a mistake silently, the tools say so (issue 14):

- ``--cfg-options`` keys that match nothing in the config: mmengine adds them as new settings,
  which nothing may read; :func:`load_config` warns, naming the closest existing keys.
- a checkpoint file that is empty or not a checkpoint (a text file, a truncated download):
  :func:`check_checkpoint_file` names the file instead of torch's bare ``EOFError`` or
  ``UnpicklingError``.
- ``--resume`` with no checkpoint in the work folder: :func:`apply_resume` warns and starts a
  new training, as without ``--resume`` (so a job script that always passes ``--resume`` works
  on its first start and on every restart), instead of mmengine's "Auto resumed from the latest
  checkpoint None".
- a checkpoint whose tensors have other shapes than the config's model, when evaluating or
  resuming: refused by :class:`mmimb.hooks.SetupCheckHook`, which :func:`build_runner` adds.
- distributed training (``--launcher pytorch|slurm|mpi``) on a machine without a GPU: mmengine's
  launchers call ``torch.cuda.set_device`` and die with "Found no NVIDIA driver";
  :func:`init_cpu_distributed` starts the ranks with gloo instead.
"""

from __future__ import annotations

import argparse
import difflib
import os.path as osp
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any
from unittest import mock

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import init_dist, is_distributed
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import find_latest_checkpoint
from torch.nn.parallel import DistributedDataParallel

from mmimb.hooks.setup_check import SetupCheckHook


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``."""
    parser.add_argument("--work-dir", help="the folder for logs, checkpoints and reports")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction,
        help="override settings of the config, key=value pairs such as "
             "train_cfg.max_iters=100 (a key that the config does not have is warned about)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"],
                        default="none", help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def unmatched_cfg_options(cfg: Config, options: Mapping[str, Any]) -> list[str]:
    """A message for every ``--cfg-options`` key that names no existing setting of ``cfg``.

    A key is a dotted path (``model.bbox_head.num_classes``; list items by index, as mmengine's
    ``merge_from_dict`` takes them: ``train_pipeline.2.scale``). It matches when every part of
    the path exists. Keys that mmengine refuses itself (an index past the end of a list) are
    left to it.

    Args:
        cfg: the config, before the options are merged.
        options: the parsed ``--cfg-options``.

    Returns:
        For each unmatched key: the key, the deepest part that exists, the missing part and the
        closest existing keys there.
    """
    messages = []
    root = cfg.to_dict()
    for key in options:
        node: Any = root
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, Mapping):
                where = ".".join(parts[:depth]) or "the config"
                close = difflib.get_close_matches(part, [str(k) for k in node], n=3, cutoff=0.8)
                hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
                messages.append(f"--cfg-options {key}: {where} has no key {part!r}{hint}; "
                                "mmengine adds it as a new setting, which nothing may read")
                break
            else:  # an index past a list's end, or a key under a value: mmengine raises
                break
    return messages


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the common command-line options merged in.

    The work folder defaults to ``./work_dirs/{config name}``, as in mmdet. Each
    ``--cfg-options`` key that matches nothing in the config gets a ``UserWarning``
    (:func:`unmatched_cfg_options`); it is merged all the same, as mmengine does.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        for message in unmatched_cfg_options(cfg, args.cfg_options):
            warnings.warn(message, UserWarning, stacklevel=2)
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    return cfg


def check_checkpoint_file(path: str) -> None:
    """Refuse a local checkpoint file that torch cannot read, naming it.

    ``torch.save`` writes a zip archive (a pickle in the legacy format of torch < 1.6); anything
    else fails deep inside ``torch.load`` with an error that names no file (``EOFError`` for an
    empty file, ``UnpicklingError`` or ``IndexError`` for a text file). Only the first bytes and
    the zip directory are read. URLs and ``scheme://`` paths are left to mmengine.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is empty or neither a zip archive nor a pickle.
    """
    if "://" in path:
        return
    if not osp.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if osp.getsize(path) == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): an interrupted save or copy? "
                         "Use another checkpoint")
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:1] == b"\x80":  # a pickle (protocol >= 2): torch's legacy format
        return
    why = ("a truncated zip archive (an interrupted save or download?)"
           if head.startswith(b"PK") else f"it starts with {head!r}")
    raise ValueError(f"checkpoint {path} is not a PyTorch checkpoint (torch.save writes a zip "
                     f"archive): {why}")


def apply_resume(cfg: Config, resume: str | None) -> None:
    """Set up ``cfg`` for ``--resume``: from ``resume``, or (``'auto'``) the latest checkpoint.

    With ``'auto'`` the latest checkpoint is the one named in the work folder's
    ``last_checkpoint`` file. When there is none, training starts anew, as without ``--resume``
    (the config's ``load_from`` included), with a ``UserWarning``.

    A config with ``resume=True`` and no ``load_from`` means ``'auto'`` to mmengine, and here.

    Args:
        cfg: the config, with its ``work_dir`` set; changed in place.
        resume: a checkpoint path, ``'auto'``, or ``None`` (no ``--resume``).
    """
    if resume is None and cfg.get("resume") and not cfg.get("load_from"):
        resume = "auto"
    if resume is None:
        return
    if resume == "auto":
        resume = find_latest_checkpoint(cfg.work_dir)
        if resume is None:
            warnings.warn(f"--resume: no checkpoint to resume from in {cfg.work_dir} (no "
                          "last_checkpoint file there); starting a new training", UserWarning,
                          stacklevel=2)
            cfg.resume = False
            return
    cfg.resume = True
    cfg.load_from = resume


def init_cpu_distributed(cfg: Config) -> bool:
    """Start distributed training on CPU processes with gloo, where mmengine's launcher cannot.

    mmengine 0.10.7 (``mmengine/dist/utils.py``) calls ``torch.cuda.set_device(local_rank)``
    in every launcher (``pytorch``, ``slurm``, ``mpi``) before ``init_process_group``, and
    wraps the model in ``DistributedDataParallel(device_ids=[local_rank])``: both need a GPU.
    Without CUDA this function, run before the runner is built, (1) replaces a ``'nccl'``
    backend in ``env_cfg.dist_cfg`` (or none) by ``'gloo'``, (2) lets mmengine's launcher set
    up the process group with ``torch.cuda.set_device`` made a no-op for that call only (the
    rank, world size and master address are still read as mmengine reads them), and
    (3) gives a ``DistributedDataParallel`` model wrapper ``device_ids=None``, as torch
    requires for a CPU module. The runner then finds the process group started and uses it.
    With CUDA, with ``launcher='none'`` or a process group already started, nothing changes:
    the same script and config use nccl on GPUs.

    Args:
        cfg: the config, with ``launcher`` set (:func:`load_config`); changed in place.

    Returns:
        Whether this function started the process group.
    """
    if cfg.get("launcher", "none") == "none" or torch.cuda.is_available() or is_distributed():
        return False
    dist_cfg = dict(cfg.get("env_cfg", {}).get("dist_cfg", {}))
    if dist_cfg.get("backend", "nccl") == "nccl":
        dist_cfg["backend"] = "gloo"
    cfg.merge_from_dict({"env_cfg.dist_cfg": dist_cfg})
    wrapper = cfg.get("model_wrapper_cfg")
    if wrapper is None:  # mmengine's default wrapper, as Runner.wrap_model builds it
        cfg.model_wrapper_cfg = dict(
            type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get("find_unused_parameters", False))
    else:
        wrapper_type = MODEL_WRAPPERS.get(wrapper.get("type", "MMDistributedDataParallel"))
        if isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel):
            wrapper.setdefault("device_ids", None)
    with mock.patch.object(torch.cuda, "set_device", lambda device: None):
        init_dist(cfg.launcher, **dist_cfg)
    return True


def build_runner(cfg: Config, strict_checkpoint: bool = False) -> Runner:
    """The default MMEngine runner, or the one the config names in ``runner_type``.

    ``cfg.load_from`` is checked first (:func:`check_checkpoint_file`), distributed runs on a
    machine without a GPU are started with gloo (:func:`init_cpu_distributed`), and the runner
    gets a :class:`~mmimb.hooks.SetupCheckHook` unless the config has one.

    Args:
        cfg: the config.
        strict_checkpoint: refuse a checkpoint whose tensors do not fit the model (evaluation
            and resuming; see :class:`~mmimb.hooks.SetupCheckHook`).
    """
    if cfg.get("load_from"):
        check_checkpoint_file(str(cfg.load_from))
    init_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    checks = [hook for hook in runner.hooks if isinstance(hook, SetupCheckHook)]
    if not checks:
        checks = [SetupCheckHook()]
        runner.register_hook(checks[0])
    for hook in checks:
        hook.strict_checkpoint = hook.strict_checkpoint or strict_checkpoint
    return runner
