"""The quality benchmark: matrix checks, statistics over seeds, tables, a resumable smoke run."""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from mmimb.quality import (
    Row,
    Run,
    Table,
    all_runs,
    check_budgets,
    load_matrix,
    parse_matrix,
    pending,
    record_path,
    summarize,
    write_table,
)
from mmimb.quality.runs import cpu_name, machine, train_command
from mmimb.quality.tables import README_BEGIN, README_END, format_markdown, spread, update_readme
from tests.conftest import REPO, load_script
from tests.test_train_e2e import write_config

BASE = "configs/faster_rcnn/faster-rcnn_r18tiny_fpn_1k_ltsynth.py"
RFS = "configs/faster_rcnn/rfs_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"


def matrix(*rows: dict[str, Any], name: str = "t") -> dict[str, Any]:
    return {"table": [{"name": name, "row": list(rows)}]}


def load_cli() -> Any:
    return load_script("benchmarks/quality.py")


def test_shipped_matrix_parses_and_every_row_has_its_baselines_budget() -> None:
    tables = load_matrix(REPO / "benchmarks/quality_matrix.toml", REPO)
    budgets = check_budgets(tables, REPO)
    for t in tables:
        base = budgets[t.name, t.baseline.name]
        assert base["iters"] and base["batch_size"] == 8
        for row in t.rows[1:]:
            assert row.budget_note or budgets[t.name, row.name] == base


@pytest.mark.parametrize(("row", "error", "match"), [
    ({"name": "b", "config": BASE, "seeds": [0], "sedes": [1]}, ValueError, "unknown keys"),
    ({"name": "b", "config": "configs/nope.py", "seeds": [0]}, ValueError, "no config file"),
    ({"name": "b", "config": BASE, "seeds": []}, ValueError, "seeds"),
    ({"name": "b", "config": BASE, "seeds": [0, 0]}, ValueError, "distinct"),
    ({"name": "b", "config": BASE, "seeds": [-1]}, ValueError, "seeds"),
    ({"name": "b", "config": BASE, "seeds": [True]}, ValueError, "seeds"),
    ({"name": "b/c", "config": BASE, "seeds": [0]}, ValueError, "name"),
    ({"name": "b", "config": BASE, "seeds": [0], "cfg_options": 3}, TypeError, "cfg_options"),
    ({"name": "b", "config": BASE, "seeds": [0], "budget_note": "x"}, ValueError, "baseline"),
    ({"name": "b", "config": BASE, "seeds": [0], "eval_from": "b"}, ValueError, "earlier row"),
    ({"name": "b", "config": BASE, "seeds": [0], "eval_from": 1}, TypeError, "eval_from"),
])
def test_invalid_rows_are_refused_naming_the_key(row: dict[str, Any], error: type,
                                                   match: str) -> None:
    with pytest.raises(error, match=match):
        parse_matrix(matrix(row), REPO)


def test_duplicate_names_and_empty_matrices_are_refused() -> None:
    row = {"name": "b", "config": BASE, "seeds": [0]}
    with pytest.raises(ValueError, match="duplicate row names"):
        parse_matrix(matrix(row, row), REPO)
    with pytest.raises(ValueError, match="duplicate table names"):
        parse_matrix({"table": matrix(row)["table"] * 2}, REPO)
    with pytest.raises(ValueError, match="at least one"):
        parse_matrix({}, REPO)
    with pytest.raises(ValueError, match="baseline"):
        parse_matrix({"table": [{"name": "t", "row": []}]}, REPO)


def test_evaluation_only_rows_need_an_earlier_training_row_with_their_seeds() -> None:
    base = {"name": "base", "config": BASE, "seeds": [0, 1]}
    post = {"name": "post", "config": BASE, "seeds": [0], "eval_from": "base"}
    table = parse_matrix(matrix(base, post), REPO)[0]
    assert [r.key for r in all_runs([table])] == ["t/base/seed0", "t/post/seed0", "t/base/seed1"]
    assert Run("t", table.rows[1], 0).source_key == "t/base/seed0"
    with pytest.raises(ValueError, match=r"seeds \[2\] have no run in row 'base'"):
        parse_matrix(matrix(base, dict(post, seeds=[2])), REPO)
    with pytest.raises(ValueError, match="earlier row that trains"):
        parse_matrix(matrix(base, post, dict(post, name="post2", eval_from="post")), REPO)


def test_second_stage_rows_start_from_an_earlier_training_row() -> None:
    base = {"name": "base", "config": BASE, "seeds": [0, 1]}
    stage2 = {"name": "crt", "config": BASE, "seeds": [1], "init_from": "base"}
    table = parse_matrix(matrix(base, stage2), REPO)[0]
    assert table.rows[1].source == "base" and not table.rows[1].eval_from
    assert Run("t", table.rows[1], 1).source_key == "t/base/seed1"
    post = {"name": "post", "config": BASE, "seeds": [0], "eval_from": "base"}
    with pytest.raises(ValueError, match=r"init_from='post' must name an earlier row that trains"):
        parse_matrix(matrix(base, post, dict(stage2, init_from="post")), REPO)
    with pytest.raises(ValueError, match=r"seeds \[2\] have no run in row 'base'"):
        parse_matrix(matrix(base, dict(stage2, seeds=[2])), REPO)
    with pytest.raises(ValueError, match="exclude each other"):
        parse_matrix(matrix(base, dict(stage2, eval_from="base")), REPO)
    with pytest.raises(TypeError, match="init_from must be a row name"):
        parse_matrix(matrix(base, dict(stage2, init_from=["base"])), REPO)


def test_a_method_with_another_budget_is_refused_unless_it_says_so() -> None:
    base = {"name": "base", "config": BASE, "seeds": [0]}
    longer = {"name": "rfs", "config": RFS, "seeds": [0],
              "cfg_options": {"train_cfg.max_iters": 2000}}
    with pytest.raises(ValueError, match=r"iters: baseline 1000, row 2000.*budget_note"):
        check_budgets(parse_matrix(matrix(base, longer), REPO), REPO)
    noted = dict(longer, budget_note="2x the iterations")
    budgets = check_budgets(parse_matrix(matrix(base, noted), REPO), REPO)
    assert budgets["t", "rfs"]["iters"] == 2000 and budgets["t", "base"]["iters"] == 1000
    other_eval = {"name": "rfs", "config": RFS, "seeds": [0],
                  "cfg_options": {"val_evaluator.count_by": "instance"}}
    with pytest.raises(ValueError, match="evaluator"):
        check_budgets(parse_matrix(matrix(base, other_eval), REPO), REPO)
    # a run of only some rows checks those rows and the baseline, not the others
    only_base = check_budgets(parse_matrix(matrix(base, longer), REPO), REPO, rows={"base"})
    assert set(only_base) == {("t", "base")}
    with pytest.raises(ValueError, match=r"row 'rfs'"):
        check_budgets(parse_matrix(matrix(base, longer), REPO), REPO, rows={"rfs"})


def test_runs_are_ordered_seed_by_seed_and_records_mark_them_done(tmp_path: Path) -> None:
    a = Row("a", BASE, (0, 1, 2))
    b = Row("b", RFS, (5,))
    c = Row("c", RFS, (0, 1))
    tables = [Table("t1", "t1", (a, b)), Table("t2", "t2", (c,))]
    order = [r.key for r in all_runs(tables)]
    assert order == ["t1/a/seed0", "t1/b/seed5", "t2/c/seed0", "t1/a/seed1", "t2/c/seed1",
                     "t1/a/seed2"]
    done = record_path(tmp_path, Run("t1", a, 1))
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    assert "t1/a/seed1" not in [r.key for r in pending(tables, tmp_path)]
    assert len(pending(tables, tmp_path)) == len(order) - 1


def test_train_command_resumes_only_from_a_checkpoint(tmp_path: Path) -> None:
    cmd = train_command("cfg.py", REPO, tmp_path)
    assert "--resume" not in cmd and cmd[-2:] == ["--work-dir", str(tmp_path)]
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_2.pth"))
    assert train_command("cfg.py", REPO, tmp_path)[-1] == "--resume"


def test_an_interrupted_training_still_counts_in_the_records_wall_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Time spent before an interruption is kept: the record sums every segment."""
    from mmimb.quality import runs

    run = Run("t", Row("a", BASE, (0,)), 0)
    work, results = tmp_path / "work", tmp_path / "records"

    def interrupted(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runs.execute(run, REPO, work, results, budget={})
    segments_file = runs.work_dir(work, run) / "quality_segments.json"
    first = json.loads(segments_file.read_text())
    assert len(first) == 1 and first[0]["seconds"] >= 0.01
    assert not record_path(results, run).exists()

    report = tmp_path / "long_tail.json"
    report.write_text(json.dumps({"overall": {"mAP": 0.5}}))
    monkeypatch.setattr(runs.subprocess, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(runs, "final_report", lambda *args, **kwargs: report)
    record = runs.execute(run, REPO, work, results, budget={})
    assert len(record["segments"]) == 2
    assert record["wall_s"] == pytest.approx(sum(s["seconds"] for s in record["segments"]))
    assert record["wall_s"] > first[0]["seconds"]


def fake_report(ap: dict[str, float], groups: dict[str, float]) -> dict[str, Any]:
    counts = {"head": 100, "mid": 30, "tail": 5}
    group_of = {"head": "frequent", "mid": "common", "tail": "rare"}
    return {"overall": {"mAP": sum(ap.values()) / 3, "mAP_50": 0.9, "F1": 0.5},
            "groups": {g: {"AP": v} for g, v in groups.items()},
            "classes": [{"name": n, "group": group_of[n], "train_count": counts[n], "AP": ap[n]}
                        for n in ("head", "mid", "tail")]}


def write_fake(results: Path, table: Table, row: Row, seed: int, tail: float) -> None:
    rec = {"report": fake_report({"head": 0.8, "mid": 0.6, "tail": tail},
                                 {"rare": tail, "common": 0.6, "frequent": 0.8}),
           "budget": {"iters": 100, "epochs": None, "batch_size": 8}, "wall_s": 120.0 + seed,
           "machine": "test machine", "finished": f"2026-12-0{seed + 1}T00:00:00+00:00"}
    path = record_path(results, Run(table.name, row, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_table_statistics_match_hand_computed_values(tmp_path: Path) -> None:
    base, method = Row("base", BASE, (0, 1, 2)), Row("m", RFS, (0, 1, 2), label="method m")
    table = Table("t", "Test table", (base, method))
    base_tail = {0: 0.30, 1: 0.20, 2: 0.25}
    method_tail = {0: 0.40, 1: 0.22}  # seed 2 not run yet
    for s, v in base_tail.items():
        write_fake(tmp_path, table, base, s, v)
    for s, v in method_tail.items():
        write_fake(tmp_path, table, method, s, v)
    from mmimb.quality import load_records
    summary = summarize(table, load_records(table, tmp_path))
    b, m = summary["rows"]
    assert b["seeds"] == [0, 1, 2] and m["seeds"] == [0, 1] and m["planned_seeds"] == [0, 1, 2]
    rare = b["metrics"]["AP_rare"]
    assert rare["mean"] == pytest.approx(statistics.mean(base_tail.values()))
    assert rare["sd"] == pytest.approx(statistics.stdev(base_tail.values()))
    assert (rare["min"], rare["max"]) == (0.20, 0.30)
    # Paired by seed: only seeds 0 and 1, differences +0.10 and +0.02.
    d = m["delta"]["AP_rare"]
    assert m["delta_seeds"] == [0, 1] and d["n"] == 2
    assert d["mean"] == pytest.approx(0.06) and d["min"] == pytest.approx(0.02)
    assert d["max"] == pytest.approx(0.10)
    assert m["delta"]["AP/tail"]["mean"] == pytest.approx(0.06)
    assert m["delta"]["AP_frequent"]["mean"] == pytest.approx(0.0)
    assert spread([0.5])["sd"] is None

    md = format_markdown(summary, "python benchmarks/quality.py")
    assert "| method m | 2/3 | 100 it x 8 |" in md
    assert "+0.060 [+0.020, +0.100]" in md
    assert "0.250 ± 0.050" in md  # baseline rare AP: mean ± sd
    assert "sd 0.050, range 0.100 over 3 seeds" in md
    assert "| tail | rare | 5 |" in md
    assert "Runs finished 2026-12-01 to 2026-12-03 on test machine." in md
    one_day = {**summary, "rows": [{**r, "finished": r["finished"][:1]} for r in summary["rows"]]}
    assert "Runs finished 2026-12-01 on test machine." in format_markdown(one_day)

    paths = write_table(table, tmp_path, tmp_path / "out", "cmd")
    assert json.loads(paths["json"].read_text())["rows"][1]["delta"]["AP_rare"]["n"] == 2
    with paths["csv"].open() as f:
        lines = {(r["row"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(lines["m", "AP_rare"]["delta_mean"]) == pytest.approx(0.06)
    assert float(lines["base", "AP_rare"]["sd"]) == pytest.approx(0.05)
    assert paths["png"].stat().st_size > 0

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    update_readme(readme, [table], tmp_path / "out")
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "#### Test table" in text and "+0.060 [+0.020, +0.100]" in text
    assert "](out/t_gain.png)" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no block"):
        update_readme(readme, [table], tmp_path / "out")


@pytest.mark.slow
def test_smoke_two_configs_two_seeds_resumes_an_interrupted_matrix(
        tmp_path: Path, tiny_root: Path) -> None:
    """2 configs x 2 seeds through ``benchmarks/quality.py``: a run interrupted after its first
    checkpoint resumes from it, a stopped matrix continues, and finished runs never retrain."""
    base_cfg = write_config(tmp_path, tiny_root, "retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py",
                            max_iters=4, val_interval=4, ckpt_interval=2)
    rfs_cfg = tmp_path / "tiny_rfs.py"
    rfs_cfg.write_text("_base_ = './tiny_cfg.py'\ntrain_dataloader = dict(sampler=dict("
                       "_delete_=True, type='RepeatFactorSampler', oversample_thr=0.5))\n")
    toml = tmp_path / "matrix.toml"
    toml.write_text(f"""
[[table]]
name = "tiny"
title = "tiny RetinaNet"
[[table.row]]
name = "baseline"
config = "{base_cfg}"
seeds = [0, 1]
[[table.row]]
name = "rfs"
config = "{rfs_cfg}"
seeds = [0, 1]
[[table.row]]
name = "again"
config = "{base_cfg}"
seeds = [0, 1]
eval_from = "baseline"
[[table.row]]
name = "stage2"
config = "{rfs_cfg}"
seeds = [0]
init_from = "baseline"
""")
    results, work, out = tmp_path / "records", tmp_path / "work", tmp_path / "tables"
    args = ["--matrix", str(toml), "--results-dir", str(results), "--work-root", str(work),
            "--out-dir", str(out)]
    cli = load_cli()
    # An interrupted run: baseline seed 1 trained to its first checkpoint (2 of 4 iterations).
    tables = load_matrix(toml, REPO)
    interrupted = Run("tiny", tables[0].rows[0], 1)
    wdir = work / interrupted.key
    import subprocess
    import sys
    subprocess.run([sys.executable, str(REPO / "tools/train.py"), str(base_cfg), "--work-dir",
                    str(wdir), "--cfg-options", "train_cfg.max_iters=2", "randomness.seed=1"],
                   cwd=REPO, check=True, capture_output=True)
    assert (wdir / "last_checkpoint").is_file()
    # A run stopped during its final validation: trained to the end, no report of the end.
    stopped = Run("tiny", tables[0].rows[1], 0)
    sdir = work / stopped.key
    subprocess.run([sys.executable, str(REPO / "tools/train.py"), str(rfs_cfg), "--work-dir",
                    str(sdir), "--cfg-options", "randomness.seed=0"],
                   cwd=REPO, check=True, capture_output=True)
    for report in sdir.glob("*/long_tail.json"):
        report.unlink()

    with pytest.raises(ValueError, match="unknown rows"):
        cli.main([*args, "--rows", "nope", "--dry-run"])
    assert cli.main([*args, "--max-runs", "2"]) == 0  # stopped after two runs
    assert len(list(results.rglob("*.json"))) == 2
    assert cli.main(args) == 0  # picks up the other two
    records = {p.relative_to(results).as_posix(): json.loads(p.read_text())
               for p in results.rglob("*.json")}
    assert sorted(records) == ["tiny/again/seed0.json", "tiny/again/seed1.json",
                               "tiny/baseline/seed0.json", "tiny/baseline/seed1.json",
                               "tiny/rfs/seed0.json", "tiny/rfs/seed1.json",
                               "tiny/stage2/seed0.json"]
    # The second stage trained from the final checkpoint of the same seed's baseline run.
    stage2 = records["tiny/stage2/seed0.json"]
    assert (stage2["init_from"], stage2["eval_from"]) == ("tiny/baseline/seed0", None)
    start = (work / "tiny/baseline/seed0/last_checkpoint").read_text().strip()
    config_text = (work / "tiny/stage2/seed0/config.py").read_text().replace(" ", "")
    assert f"load_from='{start}'" in config_text
    assert (work / "tiny/stage2/seed0/iter_4.pth").is_file()
    # Evaluation-only rows trained nothing: the baseline's checkpoints with the baseline's
    # config give the baseline's numbers.
    for seed in (0, 1):
        again = records[f"tiny/again/seed{seed}.json"]
        assert again["eval_from"] == f"tiny/baseline/seed{seed}"
        assert not list((work / f"tiny/again/seed{seed}").glob("*.pth"))
        assert again["report"]["overall"] == records[f"tiny/baseline/seed{seed}.json"][
            "report"]["overall"]
    resumed = records["tiny/baseline/seed1.json"]
    assert [s["resumed_from"] for s in resumed["segments"]] == [2]
    assert records["tiny/rfs/seed1.json"]["segments"][0]["resumed_from"] is None
    # The stopped run resumed at its last iteration and its final checkpoint was evaluated.
    assert records["tiny/rfs/seed0.json"]["segments"][0]["resumed_from"] == 4
    assert len(list(sdir.glob("*/long_tail.json"))) == 1
    for rec in records.values():
        assert rec["budget"]["iters"] == 4 and rec["report"]["groups"]["rare"]["AP"] >= 0
    # Each run trained the config with its own seed.
    assert "seed=1" in (work / "tiny/rfs/seed1/config.py").read_text().replace(" ", "")

    mtimes = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert cli.main(args) == 0  # nothing pending: no run is repeated
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == mtimes
    md = (out / "tiny.md").read_text()
    assert "| rfs | 2/2 | 4 it x 2 |" in md and (out / "tiny_gain.png").is_file()


def test_an_ensemble_row_states_its_cost() -> None:
    # The shipped EasyEnsemble config trains 3 models: refused without a budget_note.
    base = {"name": "base", "config": BASE, "seeds": [0]}
    ensemble = {"name": "ens", "config": "configs/faster_rcnn/"
                "easyensemble_faster-rcnn_r18tiny_fpn_1k_ltsynth.py", "seeds": [0]}
    with pytest.raises(ValueError, match=r"models: baseline 1, row 3"):
        check_budgets(parse_matrix(matrix(base, ensemble), REPO), REPO)
    budgets = check_budgets(parse_matrix(matrix(base, dict(ensemble, budget_note="3x")), REPO),
                            REPO)
    assert budgets["t", "ens"]["models"] == 3 and budgets["t", "base"]["models"] == 1


@pytest.mark.slow
def test_smoke_ensemble_row_records_the_fused_evaluation(tmp_path: Path, tiny_root: Path) -> None:
    """A row whose config is a balanced ensemble trains its members through the harness and
    records the evaluation of their fused predictions."""
    from tests.test_ensemble import ensemble_config

    config = ensemble_config(tmp_path, tiny_root)
    toml = tmp_path / "matrix.toml"
    toml.write_text(f'[[table]]\nname = "ens"\n[[table.row]]\nname = "easy"\n'
                    f'config = "{config}"\nseeds = [0]\n')
    results, work, out = tmp_path / "records", tmp_path / "work", tmp_path / "tables"
    assert load_cli().main(["--matrix", str(toml), "--results-dir", str(results), "--work-root",
                            str(work), "--out-dir", str(out)]) == 0
    record = json.loads((results / "ens/easy/seed0.json").read_text())
    fused = json.loads((work / "ens/easy/seed0/ensemble.json").read_text())["fused"]
    assert record["report"]["overall"] == fused["overall"]
    assert record["budget"]["models"] == 2
    assert sorted({s["member"] for s in record["segments"]}) == [0, 1]
    assert "| easy (baseline) | 1/1 | 4 it x 2 x 2 models |" in (out / "ens.md").read_text()


def test_the_record_names_the_cpu_generation() -> None:
    """Two processor generations behind one vendor name train a seed differently: keep both."""
    cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
               "model name\t: AMD EPYC\nflags\t\t: fpu avx512f\n\n"
               "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 1\nmodel name\t: other\n")
    assert cpu_name(cpuinfo) == "AMD EPYC (family 25, model 17)"
    arm = "processor\t: 0\nmodel name\t: Neoverse-N1\n"
    assert cpu_name(arm) == "Neoverse-N1 (family ?, model ?)"
    assert cpu_name("processor\t: 0\nFeatures\t: fp asimd\n") is None
    if Path("/proc/cpuinfo").is_file():
        name = cpu_name(Path("/proc/cpuinfo").read_text())
        assert name is None or name in machine()
