"""Decoupled training (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020) with one command: stage 1 trains the whole detector as usual, stage 2
retrains only its classifier with class-balanced sampling (cRT).

:func:`run_decoupled` (``tools/train_decoupled.py``) takes the stage-2 config, which names its
stage-1 config (``stage1_config``) and freezes with :class:`~mmimb.hooks.FreezeExceptHook`:

1. stage 1 trains ``stage1_config`` in ``{work_dir}/stage1`` (or a given stage-1 checkpoint is
   used and nothing is trained);
2. stage 2 trains the stage-2 config in ``{work_dir}/stage2`` with ``load_from`` set to the
   final stage-1 checkpoint;
3. ``{work_dir}/decoupled.json`` records both trainings and the stage-2 evaluation.

Each stage is a ``tools/train.py`` process (:func:`mmimb.strategies.training.train_in_work_dir`):
a finished stage is never trained again, an interrupted one resumes from its last checkpoint.

Config (the stage-2 experiment file)::

    _base_ = './faster-rcnn_r18tiny_fpn_1k_ltsynth.py'
    stage1_config = '{{fileDirname}}/faster-rcnn_r18tiny_fpn_1k_ltsynth.py'
    custom_hooks = [dict(type='FreezeExceptHook', trainable=['roi_head.bbox_head.fc_cls'])]
    train_dataloader = dict(sampler=dict(_delete_=True, type='ClassAwarePowerSampler', power=1.0))
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmengine.config import Config

from mmimb.quality.runs import final_report
from mmimb.strategies.training import train_in_work_dir

#: The hook a stage-2 config must switch on.
FREEZE_HOOK = "FreezeExceptHook"


def _load(path: str | Path, cfg_options: dict[str, Any] | None) -> Config:
    cfg = Config.fromfile(str(path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def check_stage2_config(cfg: Config) -> None:
    """Refuse a stage-2 config that does not freeze with :data:`FREEZE_HOOK`.

    Raises:
        ValueError: naming what is missing.
    """
    hooks = [h.get("type") for h in cfg.get("custom_hooks") or []]
    if FREEZE_HOOK not in hooks:
        raise ValueError(f"a stage-2 config retrains part of the stage-1 model: its custom_hooks "
                         f"must hold dict(type='{FREEZE_HOOK}', trainable=[...]), got {hooks}")


def run_decoupled(config: str | Path, work_dir: str | Path, root: str | Path,
                  stage1_checkpoint: str | Path | None = None,
                  cfg_options: dict[str, Any] | None = None, python: str = sys.executable,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train stage 1 (unless its checkpoint is given) and stage 2 of decoupled training.

    Args:
        config: the stage-2 config (see the module docstring).
        work_dir: the folder of ``stage1/``, ``stage2/`` and ``decoupled.json``.
        root: repository root (``tools/train.py`` is under it).
        stage1_checkpoint: a trained stage-1 checkpoint; stage 1 is then not trained.
        cfg_options: settings merged into both stages' configs.
        python: the interpreter of the training processes.
        echo: where progress lines go.

    Returns:
        The report written to ``{work_dir}/decoupled.json``: ``stage1`` and ``stage2`` training
        records and the stage-2 long-tail ``report``.

    Raises:
        ValueError: if the stage-2 config does not freeze, or names no ``stage1_config`` while
            no ``stage1_checkpoint`` is given.
        FileNotFoundError: if the stage-1 checkpoint or config does not exist.
        RuntimeError: if a training fails (run again to resume).
    """
    cfg = _load(config, cfg_options)
    check_stage2_config(cfg)
    work = Path(work_dir)
    if stage1_checkpoint is not None:
        if not Path(stage1_checkpoint).is_file():
            raise FileNotFoundError(f"stage1_checkpoint {str(stage1_checkpoint)!r} does not exist")
        stage1: dict[str, Any] = {"checkpoint": str(stage1_checkpoint)}
    else:
        stage1_config = cfg.get("stage1_config")
        if not stage1_config:
            raise ValueError(f"{config} names no stage1_config: set it in the config, or give "
                             "the checkpoint of a trained stage 1 (--stage1-checkpoint)")
        if not Path(stage1_config).is_file():
            raise FileNotFoundError(f"stage1_config {stage1_config!r} of {config} does not exist")
        echo(f"[decoupled] stage 1: {stage1_config} in {work / 'stage1'}")
        stage1 = train_in_work_dir(_load(stage1_config, cfg_options), work / "stage1", root,
                                   python)
    cfg.load_from = stage1["checkpoint"]
    echo(f"[decoupled] stage 2: {config} from {cfg.load_from} in {work / 'stage2'}")
    stage2 = train_in_work_dir(cfg, work / "stage2", root, python)
    with (work / "stage2" / "train.log").open("a") as log:
        report = final_report(Path(stage2["config"]), root, work / "stage2", python, log)
    result = {"config": str(config), "stage1": stage1, "stage2": stage2,
              "report_path": str(report), "report": json.loads(report.read_text())}
    out = work / "decoupled.json"
    out.write_text(json.dumps(result, indent=1))
    echo(f"[decoupled] stage-2 mAP {result['report']['overall']['mAP']:.3f}; report {out}")
    return result
