"""The quality benchmark: train a matrix of configs x seeds, one process at a time, and tabulate.

Every table of the matrix file (``benchmarks/quality_matrix.toml`` by default; format in
:mod:`mmimb.quality.matrix`) compares methods with a baseline trained with the same data,
schedule, seeds and evaluation. Runs are resumable and never repeated: a finished run leaves a
record in ``--results-dir``; an interrupted one resumes from its last checkpoint in
``--work-root``. After every run, and at the end, the tables are rewritten to ``--out-dir``
(Markdown, CSV, JSON and a per-class gain plot).

Examples::

    python benchmarks/quality.py --dry-run                 # what would run, in order
    python benchmarks/quality.py --tables ltsynth_frcnn    # run one table (in the background:
                                                           # nohup ... &; run again to resume)
    python benchmarks/quality.py --report-only             # rebuild the tables from the records
    python benchmarks/quality.py --report-only --readme README.md   # and the README's block
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mmengine.config import DictAction

from mmimb.quality import check_budgets, execute, load_matrix, pending, write_table
from mmimb.quality.matrix import select
from mmimb.quality.runs import waiting_for
from mmimb.quality.tables import update_readme

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", default=str(ROOT / "benchmarks/quality_matrix.toml"))
    parser.add_argument("--tables", nargs="+", help="only these tables (default: all)")
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks/results/quality/runs"),
                        help="one record per finished run (commit them)")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks/results/quality"),
                        help="the tables: {table}.md/.csv/.json and {table}_gain.png")
    parser.add_argument("--work-root", default=str(ROOT / "work_dirs/quality"),
                        help="one work dir per run (checkpoints, logs)")
    parser.add_argument("--rows", nargs="+", help="only the runs of these rows (default: all)")
    parser.add_argument("--max-runs", type=int, help="stop after this many runs")
    parser.add_argument("--dry-run", action="store_true", help="list the pending runs and stop")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the tables")
    parser.add_argument("--readme", help="also rewrite this README's block of quality tables")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="merged into every run's config (changes the budget of every row "
                             "alike; stored in the records)")
    args = parser.parse_args(argv)
    if args.max_runs is not None and args.max_runs < 0:
        parser.error(f"--max-runs must be >= 0, got {args.max_runs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tables = select(load_matrix(args.matrix, ROOT), args.tables)
    def report() -> None:
        for table in tables:
            paths = write_table(table, args.results_dir, args.out_dir,
                                f"python benchmarks/quality.py --tables {table.name}")
            print(f"[quality] {table.name}: {paths['md']}", flush=True)
        if args.readme:
            update_readme(args.readme, tables, args.out_dir)

    if args.report_only:
        report()
        return 0
    todo = pending(tables, args.results_dir)
    if args.rows:
        known = {row.name for t in tables for row in t.rows}
        unknown = sorted(set(args.rows) - known)
        if unknown:
            raise ValueError(f"--rows: unknown rows {unknown}; the tables have {sorted(known)}")
        todo = [r for r in todo if r.row.name in args.rows]
    # refuses unequal budgets up front, for the rows about to run
    budgets = check_budgets(tables, ROOT, args.cfg_options, {r.row.name for r in todo})
    print(f"[quality] {len(todo)} runs pending", flush=True)
    for i, run in enumerate(todo):
        print(f"[quality] {i + 1:3d}. {run.key}  ({run.row.config})", flush=True)
    if args.dry_run:
        return 0
    for i, run in enumerate(todo[:args.max_runs]):
        source = waiting_for(run, args.results_dir)
        if source is not None:
            print(f"[quality] skip {run.key}: it needs {source}, not finished", flush=True)
            continue
        start = time.perf_counter()
        print(f"[quality] run {i + 1}/{len(todo)}: {run.key}", flush=True)
        log = (Path(args.work_root) / f"{run.key}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            record = execute(run, ROOT, args.work_root, args.results_dir,
                             budgets[run.table, run.row.name], args.cfg_options, sys.executable,
                             log=f)
        groups = record["report"]["groups"]
        print(f"[quality] {run.key}: mAP {record['report']['overall']['mAP']:.3f}, rare "
              f"{groups['rare']['AP']:.3f}, frequent {groups['frequent']['AP']:.3f} "
              f"({time.perf_counter() - start:.0f} s; log {log})", flush=True)
        report()
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
