"""Training runs of the quality benchmark: one process at a time, resumable, never repeated.

A run is one ``(table, row, seed)``. It trains through ``tools/train.py`` in its own work dir
(``{work_root}/{table}/{row}/seed{seed}``) with ``randomness.seed`` set, and ends by writing its
record to ``{results_dir}/{table}/{row}/seed{seed}.json``:

- a run with a record is finished and is never trained again (delete the record to retrain);
- a run without a record whose work dir holds a checkpoint was interrupted: it resumes from
  that checkpoint (``--resume``), so a stopped matrix picks up where it stopped;
- a row with ``eval_from`` trains nothing: its run evaluates the final checkpoint of the same
  seed's run of that row (which must be finished) with ``tools/test.py`` and its own config;
- a row whose config has an ``ensemble`` setting trains a balanced ensemble
  (:func:`mmimb.strategies.run_ensemble`: ``K`` members in ``member{k}/``, each resumable) and
  records the evaluation of the members' fused predictions;
- a row with ``init_from`` trains its config from the final checkpoint of the same seed's run
  of that row (which must be finished) as ``load_from``;
- the record holds the long-tail report of the final evaluation, the settings, the budget, the
  wall time of every process that trained the run (summed) and the machine.

Records are small JSON files meant to be committed: the matrix then continues on another day or
machine, and the tables are rebuilt from them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmimb.quality.matrix import Row, Table, load_row_config

#: Version of the record format.
RECORD_VERSION = 1


@dataclass(frozen=True)
class Run:
    """One training run: a row of a table with one seed."""

    table: str
    row: Row
    seed: int

    @property
    def key(self) -> str:
        """``table/row/seed{seed}``: the run's relative folder and record path."""
        return f"{self.table}/{self.row.name}/seed{self.seed}"

    @property
    def source_key(self) -> str | None:
        """Key of the run whose checkpoint this run evaluates or starts from (None: neither)."""
        return f"{self.table}/{self.row.source}/seed{self.seed}" if self.row.source else None


def record_path(results_dir: str | Path, run: Run) -> Path:
    """Where the run's record is (or will be) written."""
    return Path(results_dir) / f"{run.key}.json"


def work_dir(work_root: str | Path, run: Run) -> Path:
    """The run's own work dir (checkpoints, logs, reports)."""
    return Path(work_root) / run.key


def waiting_for(run: Run, results_dir: str | Path) -> str | None:
    """Key of the unfinished run this run evaluates or starts from (None: it can run)."""
    key = run.source_key
    return key if key and not (Path(results_dir) / f"{key}.json").is_file() else None


def all_runs(tables: Sequence[Table]) -> list[Run]:
    """Every run of the tables, seed by seed: first seed of every row, then the second ...

    This order makes a partly run matrix useful early: one seed of every method comes first.
    """
    runs = [Run(t.name, row, seed) for t in tables for row in t.rows for seed in row.seeds]
    rank = {id(r): i for i, r in enumerate(runs)}
    return sorted(runs, key=lambda r: (r.row.seeds.index(r.seed), rank[id(r)]))


def pending(tables: Sequence[Table], results_dir: str | Path) -> list[Run]:
    """The runs without a record, in :func:`all_runs` order."""
    return [r for r in all_runs(tables) if not record_path(results_dir, r).is_file()]


def cpu_name(cpuinfo: str) -> str | None:
    """The CPU of a Linux ``/proc/cpuinfo`` text: model name, family and model numbers.

    Virtual machines often report only a vendor line ("AMD EPYC") for different processor
    generations, and the same seed has trained to different results on two machines with that
    name; family and model may tell such machines apart (not yet verified: only one has been
    seen since they were recorded). None when the text names no model.
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if "model name" not in fields:
        return None
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, " \
           f"model {fields.get('model', '?')})"


def machine() -> str:
    """A one-line description of this machine, its CPU and its torch."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    cpu = (cpu_name(cpuinfo.read_text()) if cpuinfo.is_file() else None) or platform.processor()
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"CPU only, {os.cpu_count()} cores")
    return f"{platform.machine()} {platform.system()}, {cpu}, {device}, torch {torch.__version__}"


def train_command(config: str | Path, root: str | Path, wdir: str | Path,
                  python: str = sys.executable) -> list[str]:
    """The ``tools/train.py`` command of a run; ``--resume`` when its work dir has a checkpoint."""
    cmd = [python, str(Path(root) / "tools" / "train.py"), str(config), "--work-dir", str(wdir)]
    if (Path(wdir) / "last_checkpoint").is_file():
        cmd.append("--resume")
    return cmd


def write_run_config(run: Run, root: str | Path, wdir: str | Path,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write the config the run trains: the row's, with its settings and seed merged in.

    The file (``{wdir}/config.py``, self-contained) records exactly what was trained.
    """
    cfg = load_row_config(run.row, root, {**(extra or {}), "randomness.seed": run.seed})
    path = Path(wdir) / "config.py"
    cfg.dump(str(path))
    return path


def _latest_report(wdir: Path) -> Path | None:
    reports = sorted(wdir.glob("*/long_tail.json"), key=lambda p: p.stat().st_mtime)
    return reports[-1] if reports else None


def final_checkpoint(work_dir: str | Path) -> Path | None:
    """The checkpoint that ``{work_dir}/last_checkpoint`` points to, if it exists."""
    pointer = Path(work_dir) / "last_checkpoint"
    if not pointer.is_file():
        return None
    path = Path(pointer.read_text().strip())
    return path if path.is_file() else None


def final_report(config: Path, root: str | Path, wdir: Path, python: str = sys.executable,
                 log: Any = None) -> Path:
    """The long-tail report of the run's final checkpoint.

    Training ends with a validation that writes it. A run stopped during that last validation
    resumes with nothing left to train and no validation, so its newest report would be of an
    earlier checkpoint: when the newest report is older than the last checkpoint, the checkpoint
    is evaluated with ``tools/test.py`` (the test split of our configs is the val split).

    Raises:
        RuntimeError: if no report can be found or made.
    """
    report, ckpt = _latest_report(wdir), final_checkpoint(wdir)
    if ckpt is not None and (report is None or report.stat().st_mtime < ckpt.stat().st_mtime):
        subprocess.run([python, str(Path(root) / "tools" / "test.py"), str(config), str(ckpt),
                        "--work-dir", str(wdir)], check=True, cwd=root, stdout=log, stderr=log)
        report = _latest_report(wdir)
    if report is None:
        raise RuntimeError(f"training in {wdir} finished without a long_tail.json report: is the "
                           "val_evaluator a LongTailMetric, and does training end with validation?")
    return report


@contextmanager
def timed_segment(path: str | Path, resumed_from: Any) -> Iterator[list[dict[str, Any]]]:
    """Time one training process and append it to the segments file ``path``, however it ends.

    A failed or interrupted process cost time too, so the segment is written in ``finally``:
    the wall time of a run that was resumed counts every process it took. Yields the list of
    segments, which holds the new one once the block has ended.

    Args:
        path: the JSON list of ``{"resumed_from": ..., "seconds": ...}`` segments.
        resumed_from: what the process resumes from (a checkpoint's iteration or name; None
            when it starts from scratch).
    """
    path = Path(path)
    segments = json.loads(path.read_text()) if path.is_file() else []
    started = time.perf_counter()
    try:
        yield segments
    finally:
        segments.append({"resumed_from": resumed_from, "seconds": time.perf_counter() - started})
        path.write_text(json.dumps(segments))


def _resumed_at(wdir: Path) -> int | None:
    """Iteration of the checkpoint a resumed process starts from (None: from scratch)."""
    pointer = wdir / "last_checkpoint"
    if not pointer.is_file():
        return None
    name = Path(pointer.read_text().strip()).stem  # iter_500 / epoch_3
    digits = name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else None


def execute(run: Run, root: str | Path, work_root: str | Path, results_dir: str | Path,
            budget: dict[str, Any], extra: dict[str, Any] | None = None,
            python: str = sys.executable, log: Any = None) -> dict[str, Any]:
    """Train (or resume) the run, then write and return its record.

    Args:
        run: the run.
        root: repository root (``tools/train.py`` and the config paths are under it).
        work_root: folder of the work dirs.
        results_dir: folder of the records.
        budget: the row's :func:`mmimb.quality.matrix.budget`, stored in the record.
        extra: settings merged into every run's config after the row's own.
        python: interpreter for ``tools/train.py``.
        log: a text stream for the training output (default: inherited).

    Raises:
        subprocess.CalledProcessError: if training fails; the work dir is kept, so the next
            call resumes from its last checkpoint.
    """
    wdir = work_dir(work_root, run)
    wdir.mkdir(parents=True, exist_ok=True)
    if run.row.eval_from:
        return _evaluate(run, root, work_root, results_dir, budget, extra, python, log)
    if run.row.init_from:
        extra = {**(extra or {}), "load_from": str(_source_checkpoint(run, work_root, results_dir))}
    config = write_run_config(run, root, wdir, extra)
    if load_row_config(run.row, root, extra).get("ensemble"):
        return _train_ensemble(run, config, root, wdir, results_dir, budget, extra, python, log)
    cmd = train_command(config, root, wdir, python)
    start_iter = _resumed_at(wdir) if "--resume" in cmd else None
    with timed_segment(wdir / "quality_segments.json", start_iter) as segments:
        subprocess.run(cmd, check=True, cwd=root, stdout=log, stderr=log)
        report = final_report(config, root, wdir, python, log)
    return _write_record(run, results_dir, budget, extra, segments, report)


def _train_ensemble(run: Run, config: Path, root: str | Path, wdir: Path,
                    results_dir: str | Path, budget: dict[str, Any],
                    extra: dict[str, Any] | None, python: str, log: Any) -> dict[str, Any]:
    """Train (or resume) the run's balanced ensemble and record its fused evaluation."""
    from mmimb.strategies.ensemble import run_ensemble  # strategies import this module

    def echo(line: str) -> None:
        print(line, file=log, flush=True)

    result = run_ensemble(config, wdir, root, python=python, echo=echo)
    report = _latest_report(wdir / "fused")
    if report is None:
        raise RuntimeError(f"the ensemble in {wdir} left no fused long_tail.json")
    segments = [dict(segment, member=k) for k, member in enumerate(result["members"])
                for segment in member["segments"]]
    return _write_record(run, results_dir, budget, extra, segments, report)


def _source_checkpoint(run: Run, work_root: str | Path, results_dir: str | Path) -> Path:
    """The final checkpoint of ``run.source_key``, which must be finished."""
    source = waiting_for(run, results_dir)
    if source is not None:
        raise RuntimeError(f"{run.key} needs the checkpoint of {source}, which has not "
                           "finished: run that row first")
    source_dir = Path(work_root) / str(run.source_key)
    ckpt = final_checkpoint(source_dir)
    if ckpt is None:
        raise RuntimeError(f"{run.key}: {run.source_key} is finished but its checkpoint is gone "
                           f"from {source_dir}; delete its record and run it again")
    return ckpt


def _evaluate(run: Run, root: str | Path, work_root: str | Path, results_dir: str | Path,
              budget: dict[str, Any], extra: dict[str, Any] | None, python: str,
              log: Any) -> dict[str, Any]:
    """Evaluate the final checkpoint of ``run.source_key`` with the run's own config."""
    ckpt = _source_checkpoint(run, work_root, results_dir)
    wdir = work_dir(work_root, run)
    config = write_run_config(run, root, wdir, extra)
    started = time.perf_counter()
    subprocess.run([python, str(Path(root) / "tools" / "test.py"), str(config), str(ckpt),
                    "--work-dir", str(wdir)], check=True, cwd=root, stdout=log, stderr=log)
    report = _latest_report(wdir)
    if report is None:
        raise RuntimeError(f"evaluating {ckpt} in {wdir} wrote no long_tail.json: is the "
                           "test_evaluator a LongTailMetric?")
    segments = [{"evaluated": str(run.source_key), "seconds": time.perf_counter() - started}]
    return _write_record(run, results_dir, budget, extra, segments, report)


def _write_record(run: Run, results_dir: str | Path, budget: dict[str, Any],
                  extra: dict[str, Any] | None, segments: list[dict[str, Any]],
                  report: Path) -> dict[str, Any]:
    record = {
        "version": RECORD_VERSION,
        "table": run.table, "row": run.row.name, "seed": run.seed,
        "config": run.row.config,
        "cfg_options": {**run.row.cfg_options, **(extra or {})},
        "eval_from": run.source_key if run.row.eval_from else None,
        "init_from": run.source_key if run.row.init_from else None,
        "budget": budget,
        "wall_s": sum(s["seconds"] for s in segments),
        "segments": segments,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "report": json.loads(report.read_text()),
    }
    out = record_path(results_dir, run)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)  # atomic: a record is complete or absent
    return record
