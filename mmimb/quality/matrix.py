"""The quality benchmark's matrix: tables of methods (configs) x seeds, read from a TOML file.

A matrix file holds one ``[[table]]`` per dataset and detector; each table's first ``[[table.row]]``
is its baseline, the others are methods compared with it::

    [[table]]
    name = "ltsynth_frcnn"                    # folder and file names of its results
    title = "Tiny Faster R-CNN, synthetic long tail, 1000 iterations"
    eval_split = "val (balanced: 25 boxes per class)"
    selection = "settings chosen on val"      # how the settings were chosen (printed)

    [[table.row]]
    name = "baseline"
    config = "configs/faster_rcnn/faster-rcnn_r18tiny_fpn_1k_ltsynth.py"
    seeds = [0, 1, 2]

    [[table.row]]
    name = "classaware"
    label = "ClassAwarePowerSampler, q 0.5"
    config = "configs/faster_rcnn/classaware_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"
    seeds = [0, 1, 2]
    cfg_options = { "train_dataloader.sampler.power" = 0.5 }   # optional
    budget_note = ""                          # required when the budget differs (see below)

    [[table.row]]
    name = "posthoc"
    config = "configs/faster_rcnn/posthoclogitadjust_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"
    seeds = [0, 1, 2]
    eval_from = "baseline"                    # no training: evaluate that row's checkpoints

A row with ``eval_from`` trains nothing: each of its seeds evaluates the final checkpoint of the
named earlier row's run with the same seed, with its own config (a post-hoc change such as an
inference-time logit adjustment). A row with ``init_from`` trains its config starting from that
checkpoint (``load_from``; a second stage such as classifier re-training, whose extra iterations
its ``budget_note`` states). Either way its seeds must be a subset of the named row's, and that
row must train.

Honesty rule (:func:`check_budgets`): every method of a table is trained and evaluated like its
baseline: same training loop and number of iterations (or epochs), batch size, evaluation
split and evaluator. A row that differs must say how in ``budget_note``, which the table prints
next to it; otherwise the matrix is refused before anything trains.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Allowed characters of table and row names (they become folder names).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Row:
    """One method of a table (the first row of a table is its baseline).

    Attributes:
        name: short name, unique in its table (a folder name).
        config: config path, relative to the repository root.
        seeds: values of ``randomness.seed``, one training run each.
        label: what the row is, for the tables (defaults to ``name``).
        cfg_options: settings merged into the config (``--cfg-options`` of ``tools/train.py``).
        budget_note: how the row's budget differs from the baseline's ('' when it does not).
        eval_from: name of an earlier row whose checkpoints this row evaluates without
            training ('' for a row that trains).
        init_from: name of an earlier row whose checkpoints this row's training starts from
            ('' for a row that starts from its config's weights).
    """

    name: str
    config: str
    seeds: tuple[int, ...]
    label: str = ""
    cfg_options: dict[str, Any] = field(default_factory=dict)
    budget_note: str = ""
    eval_from: str = ""
    init_from: str = ""

    @property
    def source(self) -> str:
        """The row whose checkpoints this row evaluates or starts from ('' for none)."""
        return self.eval_from or self.init_from

    @property
    def title(self) -> str:
        """``label`` or, when empty, ``name``."""
        return self.label or self.name


@dataclass(frozen=True)
class Table:
    """One results table: a baseline and the methods compared with it on one dataset.

    Attributes:
        name: unique name (a file and folder name).
        title: heading of the table.
        rows: the baseline first, then the methods.
        eval_split: the split the numbers are measured on.
        selection: how settings were chosen (the split used for it).
    """

    name: str
    title: str
    rows: tuple[Row, ...]
    eval_split: str = "val"
    selection: str = "settings chosen on the val split"

    @property
    def baseline(self) -> Row:
        """The first row."""
        return self.rows[0]


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{what} must be a name of letters, digits, '_', '.', '-', got {value!r}")
    return value


def _row(data: dict[str, Any], where: str, root: Path) -> Row:
    known = {"name", "config", "seeds", "label", "cfg_options", "budget_note", "eval_from",
             "init_from"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {sorted(known)}")
    name = _name(data.get("name"), f"{where}.name")
    config = data.get("config")
    if not isinstance(config, str) or not (root / config).is_file():
        raise ValueError(f"{where}.config: no config file {config!r} under {root}")
    seeds = data.get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ValueError(f"{where}.seeds must be a non-empty list of distinct integers >= 0, "
                         f"got {seeds!r}")
    options = data.get("cfg_options", {})
    if not isinstance(options, dict):
        raise TypeError(f"{where}.cfg_options must be a table of key = value, got {options!r}")
    sources = {}
    for key in ("eval_from", "init_from"):
        sources[key] = data.get(key, "")
        if not isinstance(sources[key], str):
            raise TypeError(f"{where}.{key} must be a row name, got {sources[key]!r}")
    if sources["eval_from"] and sources["init_from"]:
        raise ValueError(f"{where}: eval_from (evaluate without training) and init_from (train "
                         "from a checkpoint) exclude each other; keep one")
    return Row(name, config, tuple(seeds), str(data.get("label", "")), dict(options),
               str(data.get("budget_note", "")), sources["eval_from"], sources["init_from"])


def _check_sources(rows: Sequence[Row], table: str) -> None:
    for i, row in enumerate(rows):
        if not row.source:
            continue
        key = "eval_from" if row.eval_from else "init_from"
        earlier = {r.name: r for r in rows[:i] if not r.eval_from}
        source = earlier.get(row.source)
        if source is None:
            raise ValueError(f"table {table!r} row {row.name!r}: {key}={row.source!r} "
                             f"must name an earlier row that trains, one of {sorted(earlier)}")
        missing = sorted(set(row.seeds) - set(source.seeds))
        if missing:
            raise ValueError(f"table {table!r} row {row.name!r}: seeds {missing} have no run in "
                             f"row {source.name!r} (seeds {list(source.seeds)}) to start from "
                             "or evaluate")


def parse_matrix(data: dict[str, Any], root: str | Path) -> list[Table]:
    """Tables from the parsed TOML ``data``; config paths are checked under ``root``.

    Raises:
        ValueError: naming the table, row and key of the first invalid entry (unknown key,
            duplicate name, missing config, bad seeds, a table without rows).
        TypeError: if ``cfg_options`` is not a table.
    """
    root = Path(root)
    tables_data = data.get("table")
    if not isinstance(tables_data, list) or not tables_data:
        raise ValueError("the matrix needs at least one [[table]]")
    tables: list[Table] = []
    for i, t in enumerate(tables_data):
        name = _name(t.get("name"), f"table[{i}].name")
        rows_data = t.get("row")
        if not isinstance(rows_data, list) or not rows_data:
            raise ValueError(f"table {name!r} needs at least one [[table.row]] (its baseline)")
        rows = tuple(_row(r, f"table {name!r} row[{j}]", root) for j, r in enumerate(rows_data))
        names = [r.name for r in rows]
        if len(set(names)) != len(names):
            raise ValueError(f"table {name!r}: duplicate row names in {names}")
        _check_sources(rows, name)
        if rows[0].budget_note:
            raise ValueError(f"table {name!r}: the baseline row {rows[0].name!r} defines the "
                             "budget and cannot have a budget_note")
        tables.append(Table(name, str(t.get("title", name)), rows,
                            str(t.get("eval_split", "val")),
                            str(t.get("selection", "settings chosen on the val split"))))
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate table names in {names}")
    return tables


def load_matrix(path: str | Path, root: str | Path | None = None) -> list[Table]:
    """Read a matrix TOML file; config paths are relative to ``root`` (default: the cwd)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return parse_matrix(data, Path.cwd() if root is None else root)


def select(tables: Sequence[Table], names: Sequence[str] | None) -> list[Table]:
    """The tables called ``names`` (all when None).

    Raises:
        ValueError: naming an unknown table and the valid names.
    """
    if not names:
        return list(tables)
    known = {t.name: t for t in tables}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown tables {unknown}; the matrix has {sorted(known)}")
    return [known[n] for n in names]


def load_row_config(row: Row, root: str | Path, extra: dict[str, Any] | None = None) -> Any:
    """The row's mmengine ``Config`` with its ``cfg_options`` (then ``extra``) merged in."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(Path(root) / row.config))
    if row.cfg_options:
        cfg.merge_from_dict(row.cfg_options)
    if extra:
        cfg.merge_from_dict(extra)
    return cfg


def _dataset_leaf(cfg: Any) -> Any:
    dataset = cfg.get("dataset", {})
    while isinstance(dataset, dict) and "dataset" in dataset:  # wrappers
        dataset = dataset["dataset"]
    return dataset


def budget(cfg: Any) -> dict[str, Any]:
    """What must be equal across a table's rows: training length, batch, evaluation data.

    Returns:
        ``{'loop', 'iters', 'epochs', 'batch_size', 'models', 'eval_data', 'evaluator'}``;
        ``models`` is the number of models trained (an ensemble's members, else 1);
        ``eval_data`` names the validation dataset (its type, annotation file or split, data
        root).
    """
    train = cfg.train_cfg
    val = _dataset_leaf(cfg.val_dataloader)
    evaluator = cfg.val_evaluator
    evaluator = {k: v for k, v in dict(evaluator).items() if k != "out_dir"}
    return {
        "loop": train.get("type", "EpochBasedTrainLoop"),
        "iters": train.get("max_iters"),
        "epochs": train.get("max_epochs"),
        "batch_size": cfg.train_dataloader.batch_size,
        "models": int((cfg.get("ensemble") or {}).get("members", 1)),
        "eval_data": {k: val.get(k) for k in ("type", "ann_file", "split", "data_root")},
        "evaluator": evaluator,
    }


def check_budgets(tables: Sequence[Table], root: str | Path,
                  extra: dict[str, Any] | None = None,
                  rows: Collection[str] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Check that every method is trained and evaluated like its table's baseline.

    Args:
        tables: the tables to check.
        root: the repository root the configs are relative to.
        extra: cfg options merged into every row's config (``--cfg-options``).
        rows: only the rows of these names (and each table's baseline); all rows when ``None``.
            Reading a config costs about a second, so a run of a few rows checks only those.

    Returns:
        The :func:`budget` of every checked ``(table, row)``.

    Raises:
        ValueError: naming the table, the row and each differing setting with both values,
            for a row without ``budget_note``.
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for table in tables:
        base = budget(load_row_config(table.baseline, root, extra))
        out[table.name, table.baseline.name] = base
        for row in table.rows[1:]:
            if rows is not None and row.name not in rows:
                continue
            mine = budget(load_row_config(row, root, extra))
            out[table.name, row.name] = mine
            diff = {k: (base[k], mine[k]) for k in base if base[k] != mine[k]}
            if diff and not row.budget_note:
                raise ValueError(
                    f"table {table.name!r}, row {row.name!r}: trained or evaluated unlike the "
                    f"baseline {table.baseline.name!r}: "
                    + "; ".join(f"{k}: baseline {a!r}, row {b!r}" for k, (a, b) in diff.items())
                    + ". Use the baseline's budget, or say how it differs in budget_note")
    return out
