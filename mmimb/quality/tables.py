"""Tables of the quality benchmark: every method's numbers over seeds, against its baseline.

For each row and metric (mAP, AP50, AP of each frequency group, mean F1, every class's AP) a
table reports the **mean and the sample standard deviation** over the row's seeds (``ddof=1``;
none for one seed) with the min and max in the CSV and JSON. The difference to the baseline is
**paired by seed**: for each seed both rows were trained with, ``method - baseline``; the table
gives the mean of those differences and their range ``[min, max]``. A range that contains 0 is
a difference the seeds do not decide.

Files written for a table ``name`` (:func:`write_table`): ``name.md``, ``name.csv`` (one line
per row, metric), ``name.json`` (everything) and ``name_gain.png`` (per-class AP gain against
training frequency, error bars the range over seeds).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmimb.quality.matrix import Table
from mmimb.quality.runs import Run, record_path
from mmimb.stats import GROUP_NAMES

#: Overall metrics of the tables, as ``(key, heading)``.
OVERALL: tuple[tuple[str, str], ...] = (
    ("mAP", "mAP"), ("mAP_50", "AP50"), ("AP_rare", "AP rare"), ("AP_common", "AP common"),
    ("AP_frequent", "AP frequent"), ("F1", "F1"))


def load_records(table: Table, results_dir: str | Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{row name: {seed: record}}`` of the table's finished runs (rows with none are empty)."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for row in table.rows:
        out[row.name] = {}
        for seed in row.seeds:
            path = record_path(results_dir, Run(table.name, row, seed))
            if path.is_file():
                out[row.name][seed] = json.loads(path.read_text())
    return out


def metrics_of(report: dict[str, Any]) -> dict[str, float]:
    """Scalars of one long-tail report: overall, ``AP_{group}`` and ``AP/{class}``."""
    out = {k: float(report["overall"][k]) for k in ("mAP", "mAP_50", "F1")}
    for g in GROUP_NAMES:
        out[f"AP_{g}"] = float(report["groups"][g]["AP"])
    for c in report["classes"]:
        out[f"AP/{c['name']}"] = float(c["AP"])
    return out


def spread(values: Sequence[float]) -> dict[str, Any]:
    """``{'n', 'mean', 'sd', 'min', 'max'}`` of the values (``sd`` None for fewer than 2)."""
    v = np.asarray(values, dtype=np.float64)
    return {"n": int(v.size), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else None,
            "min": float(v.min()), "max": float(v.max())}


def summarize(table: Table, records: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Everything the table's files show, as a json-serialisable dict.

    Returns:
        ``{'table', 'title', 'eval_split', 'selection', 'classes', 'rows'}``; ``classes`` lists
        ``{'name', 'group', 'train_count'}`` from the baseline's report; each row has its
        ``seeds``, ``metrics`` (:func:`spread` per metric), ``delta`` (paired differences to
        the baseline per metric: :func:`spread` of ``method - baseline`` over shared seeds),
        ``budget``, ``wall_min`` and ``budget_note``.
    """
    base_records = records.get(table.baseline.name, {})
    any_record = next((r for rs in records.values() for r in rs.values()), None)
    classes = ([{k: c[k] for k in ("name", "group", "train_count")}
                for c in any_record["report"]["classes"]] if any_record else [])
    base_metrics = {s: metrics_of(r["report"]) for s, r in base_records.items()}
    rows = []
    for row in table.rows:
        recs = records.get(row.name, {})
        per_seed = {s: metrics_of(r["report"]) for s, r in sorted(recs.items())}
        keys = list(next(iter(per_seed.values()))) if per_seed else []
        metrics = {k: spread([m[k] for m in per_seed.values()]) for k in keys}
        shared = [s for s in per_seed if s in base_metrics]
        delta = ({k: spread([per_seed[s][k] - base_metrics[s][k] for s in shared]) for k in keys}
                 if shared and row is not table.baseline else {})
        first = next(iter(recs.values()), None)
        rows.append({
            "name": row.name, "label": row.title, "config": row.config,
            "planned_seeds": list(row.seeds), "seeds": sorted(per_seed),
            "metrics": metrics, "delta": delta, "delta_seeds": shared,
            "budget": first["budget"] if first else None,
            "wall_min": (spread([r["wall_s"] / 60 for r in recs.values()]) if recs else None),
            "budget_note": row.budget_note,
            "eval_from": row.eval_from,
            "init_from": row.init_from,
            "machines": sorted({r["machine"] for r in recs.values()}),
            "finished": sorted(r["finished"] for r in recs.values()),
        })
    return {"table": table.name, "title": table.title, "eval_split": table.eval_split,
            "selection": table.selection, "classes": classes, "rows": rows}


def _mean_sd(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    if s["sd"] is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def _delta(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:+.3f} (1 seed)"
    return f"{s['mean']:+.3f} [{s['min']:+.3f}, {s['max']:+.3f}]"


def _budget_text(b: dict[str, Any] | None) -> str:
    if not b:
        return "-"
    length = f"{b['iters']} it" if b.get("iters") else f"{b['epochs']} ep"
    models = b.get("models", 1)
    return f"{length} x {b['batch_size']}" + (f" x {models} models" if models > 1 else "")


def format_markdown(summary: dict[str, Any], command: str = "") -> str:
    """The table as Markdown: the main table, the per-class table and how to read them."""
    rows = summary["rows"]
    base = rows[0]
    lines = [f"### {summary['title']}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    finished = sorted(t for r in rows for t in r["finished"])
    machines = sorted({m for r in rows for m in r["machines"]})
    if finished:
        first, last = finished[0][:10], finished[-1][:10]
        when = first if first == last else f"{first} to {last}"
        lines += [f"Runs finished {when} on "
                  f"{'; '.join(machines)}. Evaluated on {summary['eval_split']}; "
                  f"{summary['selection']}.", ""]
    lines += ["| method | seeds | budget | " + " | ".join(h for _, h in OVERALL)
              + " | Δ AP rare | Δ AP frequent | wall min |",
              "|---|---:|---|" + "---:|" * (len(OVERALL) + 3)]
    for r in rows:
        seeds = f"{len(r['seeds'])}/{len(r['planned_seeds'])}"
        label = r["label"] + (f" ({r['budget_note']})" if r["budget_note"] else "")
        if r.get("eval_from"):
            label += f" (no training: {r['eval_from']}'s checkpoints)"
        if r.get("init_from"):
            label += f" (trained from {r['init_from']}'s checkpoints)"
        if r is base:
            label += " (baseline)"
        cells = [_mean_sd(r["metrics"].get(k)) for k, _ in OVERALL]
        deltas = ["", ""] if r is base else [_delta(r["delta"].get("AP_rare")),
                                             _delta(r["delta"].get("AP_frequent"))]
        wall = f"{r['wall_min']['mean']:.1f}" if r["wall_min"] else "-"
        lines.append(f"| {label} | {seeds} | {_budget_text(r['budget'])} | " + " | ".join(cells)
                     + f" | {deltas[0]} | {deltas[1]} | {wall} |")
    lines += ["", "Mean ± sample standard deviation over the seeds run (seeds: run/planned). "
              "Δ: mean of the per-seed differences to the baseline trained with the same seed "
              "[min, max]; a range containing 0 is not decided by these seeds. Every row has "
              "the baseline's iterations, batch size and evaluation unless its label says "
              "otherwise (re-sampling changes which images an iteration sees, not how many)."]
    b = base["metrics"].get("AP_rare")
    if b and b["n"] > 1:
        lines += ["", f"Seed spread of the baseline's rare-group AP: sd {b['sd']:.3f}, range "
                  f"{b['max'] - b['min']:.3f} over {b['n']} seeds."]
    if summary["classes"] and any(r["metrics"] for r in rows):
        lines += ["", "| class | group | train count | " + " | ".join(r["name"] for r in rows)
                  + " |", "|---|---|---:|" + "---:|" * len(rows)]
        for c in summary["classes"]:
            cells = [_mean_sd(r["metrics"].get(f"AP/{c['name']}")) for r in rows]
            lines.append(f"| {c['name']} | {c['group']} | {c['train_count']} | "
                         + " | ".join(cells) + " |")
        lines += ["", "Per-class AP (IoU 0.5:0.95), mean ± sd over seeds."]
    return "\n".join(lines) + "\n"


def write_csv(summary: dict[str, Any], path: str | Path) -> Path:
    """One line per row and metric: mean, sd, min, max, n, and the paired Δ to the baseline."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label", "metric", "n", "mean", "sd", "min", "max",
                    "delta_n", "delta_mean", "delta_min", "delta_max"])
        for r in summary["rows"]:
            for k, s in r["metrics"].items():
                d = r["delta"].get(k)
                w.writerow([r["name"], r["label"], k, s["n"], s["mean"], s["sd"], s["min"],
                            s["max"], *(d[x] for x in ("n", "mean", "min", "max"))
                            ] if d else [r["name"], r["label"], k, s["n"], s["mean"], s["sd"],
                                         s["min"], s["max"], "", "", "", ""])
    return path


def write_table(table: Table, results_dir: str | Path, out_dir: str | Path,
                command: str = "") -> dict[str, Path]:
    """Summarise the table's records and write ``.md``, ``.csv``, ``.json`` and ``_gain.png``."""
    from mmimb.analysis.plots import plot_gain_vs_frequency

    summary = summarize(table, load_records(table, results_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{table.name}.md", "json": out / f"{table.name}.json"}
    paths["md"].write_text(format_markdown(summary, command))
    paths["json"].write_text(json.dumps(summary, indent=1))
    paths["csv"] = write_csv(summary, out / f"{table.name}.csv")
    if any(r["delta"] for r in summary["rows"]):
        paths["png"] = plot_gain_vs_frequency(summary, out / f"{table.name}_gain.png")
    return paths


#: Markers of the README block that :func:`update_readme` rewrites.
README_BEGIN = "<!-- quality-tables:begin (written by benchmarks/quality.py --readme) -->"
README_END = "<!-- quality-tables:end -->"


def update_readme(readme: str | Path, tables: Sequence[Table], out_dir: str | Path) -> Path:
    """Replace the README's block between :data:`README_BEGIN` and :data:`README_END` with the
    tables' Markdown files (and their gain plots), as written by :func:`write_table`.

    Raises:
        ValueError: if the README lacks the two markers, in that order.
    """
    readme, out = Path(readme), Path(out_dir)
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no block {README_BEGIN!r} ... {README_END!r} to rewrite")
    parts = []
    for table in tables:
        md = out / f"{table.name}.md"
        if not md.is_file():
            continue
        body = md.read_text().replace("### ", "#### ", 1)
        png = out / f"{table.name}_gain.png"
        if png.is_file():
            rel = Path(png).resolve().relative_to(readme.resolve().parent).as_posix()
            body += f"\n![{table.name}: per-class AP gain]({rel})\n"
        parts.append(body)
    block = "\n".join([README_BEGIN, "", *parts, README_END])
    readme.write_text(text[:start] + block + text[end + len(README_END):])
    return readme
