"""Train one config in its own work dir through ``tools/train.py``: resumable, never repeated.

The multi-model strategies (the members of an ensemble, the two stages of decoupled training)
train every model as its own ``tools/train.py`` process, exactly as a single model is trained,
in a work dir of its own, one after another:

- the config a model trains is written to ``{work_dir}/config.py`` (self-contained);
- a work dir with ``finished.json`` holds a finished model: it is never trained again (delete
  that file to retrain it);
- a work dir with a checkpoint but no ``finished.json`` was interrupted: training resumes from
  its last checkpoint (``--resume``);
- ``finished.json`` records the final checkpoint, the classes the model was trained on (from the
  checkpoint's ``dataset_meta``), and the wall time of every training process, including one
  that failed or was interrupted by Ctrl-C (``{work_dir}/segments.json`` keeps them until the
  model is finished; a process killed outright, SIGKILL, cannot record its time).

The training output goes to ``{work_dir}/train.log``.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from mmimb.quality.runs import final_checkpoint, timed_segment, train_command

#: Name of the record of a finished training in its work dir.
FINISHED = "finished.json"


def trained_classes(checkpoint: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The classes a loaded checkpoint's model was trained on (``meta.dataset_meta.classes``).

    mmengine's runner stores the training dataset's ``metainfo`` there. ``None`` when the
    checkpoint does not say (one not written by the runner).
    """
    classes = (checkpoint.get("meta") or {}).get("dataset_meta", {}).get("classes")
    return None if classes is None else tuple(classes)


def read_finished(work_dir: str | Path) -> dict[str, Any] | None:
    """The record of a finished training in ``work_dir``, or ``None``.

    Raises:
        FileNotFoundError: if the record names a checkpoint that no longer exists.
    """
    path = Path(work_dir) / FINISHED
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    if not Path(record["checkpoint"]).is_file():
        raise FileNotFoundError(f"{path} records the checkpoint {record['checkpoint']}, which is "
                                f"gone: restore it, or delete {path} to train again")
    return record


def train_in_work_dir(cfg: Config, work_dir: str | Path, root: str | Path,
                      python: str = sys.executable) -> dict[str, Any]:
    """Train ``cfg`` in ``work_dir`` (or resume it); return the record of the finished training.

    A finished training (``finished.json``) is returned as it is, without starting a process.

    Args:
        cfg: the config to train; written to ``{work_dir}/config.py``.
        work_dir: the model's own work dir.
        root: repository root (``tools/train.py`` is under it).
        python: the interpreter of the training process.

    Returns:
        ``config``, ``checkpoint``, ``classes`` (list or None), ``wall_s``, ``segments`` (one
        ``{"resumed_from": checkpoint name or None, "seconds": ...}`` per process) and
        ``finished`` (UTC time).

    Raises:
        RuntimeError: if training fails (the log says why; the work dir is kept, so the next
            call resumes) or leaves no checkpoint.
    """
    wdir = Path(work_dir)
    record = read_finished(wdir)
    if record is not None:
        return record
    wdir.mkdir(parents=True, exist_ok=True)
    config = wdir / "config.py"
    cfg.dump(str(config))
    cmd = train_command(config, root, wdir, python)
    resumed = final_checkpoint(wdir) if "--resume" in cmd else None
    log = wdir / "train.log"
    with timed_segment(wdir / "segments.json", None if resumed is None else resumed.name) \
            as segments, log.open("a") as stream:
        proc = subprocess.run(cmd, cwd=root, stdout=stream, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"training in {wdir} failed (exit status {proc.returncode}); see {log}. "
                           "Run again to resume from its last checkpoint")
    ckpt = final_checkpoint(wdir)
    if ckpt is None:
        raise RuntimeError(f"training in {wdir} finished without a checkpoint; see {log}")
    classes = trained_classes(torch.load(ckpt, map_location="cpu"))  # see mmimb.compat
    record = {
        "config": str(config),
        "checkpoint": str(ckpt),
        "classes": None if classes is None else list(classes),
        "wall_s": sum(s["seconds"] for s in segments),
        "segments": segments,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    tmp = wdir / f"{FINISHED}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(wdir / FINISHED)  # atomic: a training is finished or not
    return record
