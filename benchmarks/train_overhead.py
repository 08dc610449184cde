"""Per-iteration training time of the demo RetinaNet with mmimb's recipe, against plain mmdet.

Three variants of ``configs/retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py`` (the plain mmdet
config: ``DefaultSampler``, mmdet's ``FocalLoss``), each a full mmengine ``Runner``:

* ``baseline``: the plain config;
* ``recipe``: the repeat-factor sampler of ``rfs_*``, the class-balanced focal loss and the
  ``ClassStatsHook`` of ``cbfocal_*`` (read from those files, so the benchmark follows them);
* ``recipe + copy-paste``: the same with the training pipeline of ``rarecopypaste_*``.

An iteration is what ``IterBasedTrainLoop`` does for one batch: the data loader's next batch
(sampling, loading, the whole pipeline, collation), then ``run_iter`` (the hooks, forward,
backward, gradient clipping and the AdamW step). The data loader has ``num_workers=0`` in every
variant, so data loading is timed in the training process itself instead of hidden behind
worker processes; validation and checkpoints are switched off.

The three runners are built once in one process (set-up: building the runner, the loop, the
optimizer and ``before_train``, where ``ClassStatsHook`` reads the class counts; the first
``--warmup`` iterations, where the copy-paste bank is built, are not timed). Then ``--rounds``
rounds each run a block of ``--iters`` iterations of every variant, the order of the variants
rotated from round to round, so that a change of the machine's load hits every variant alike.
The table gives each variant's median over rounds of the seconds per iteration (wall clock and
this process's CPU time), and the median over rounds of its ratio to the baseline in the same
round, with the range. Short blocks and many rounds follow a changing load more closely; one
torch thread (``--threads``) keeps a loaded machine from inflating the time of idle threads.

Memory: ``set-up MiB`` is what ``tracemalloc`` sees still allocated after a variant's set-up
(Python objects and numpy buffers: the datasets, the label statistics, the crop bank; torch
tensors are not traced, and the models are alike). ``peak RSS MiB`` is the largest resident
set of the process during the variant's blocks (``VmHWM``, reset before each block through
``/proc/self/clear_refs``; Linux only, ``n/a`` elsewhere); the process's peak over the whole
run (``resource.getrusage``) is printed below the table.

Usage::

    python benchmarks/train_overhead.py                   # 10 rounds x 5 iterations, 1 thread
    python benchmarks/train_overhead.py --iters 3 --rounds 12 --warmup 2 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import mmimb  # noqa: F401  (registers the components)

REPO = Path(__file__).resolve().parents[1]
BASELINE = "configs/retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py"
RFS = "configs/retinanet/rfs_retinanet_r18tiny_fpn_2k_ltsynth.py"
CBFOCAL = "configs/retinanet/cbfocal_retinanet_r18tiny_fpn_2k_ltsynth.py"
COPY_PASTE = "configs/retinanet/rarecopypaste_retinanet_r18tiny_fpn_2k_ltsynth.py"
#: The issue's targets: the most a variant may cost per iteration, relative to the baseline.
TARGETS = {"baseline": 1.0, "recipe": 1.05, "recipe + copy-paste": 1.2}


def variant_configs() -> dict[str, Config]:
    """The configs of the three variants, built from the experiment files of the repository."""
    base = Config.fromfile(str(REPO / BASELINE))
    rfs = Config.fromfile(str(REPO / RFS))
    cbfocal = Config.fromfile(str(REPO / CBFOCAL))
    copy_paste = Config.fromfile(str(REPO / COPY_PASTE))
    recipe = copy.deepcopy(base)
    recipe.train_dataloader.sampler = rfs.train_dataloader.sampler
    recipe.model.bbox_head.loss_cls = cbfocal.model.bbox_head.loss_cls
    recipe.custom_hooks = cbfocal.custom_hooks
    with_paste = copy.deepcopy(recipe)
    with_paste.train_dataloader.dataset.pipeline = copy_paste.train_dataloader.dataset.pipeline
    return {"baseline": base, "recipe": recipe, "recipe + copy-paste": with_paste}


def benchmark_config(cfg: Config, name: str, work_dir: Path) -> Config:
    """``cfg`` set up for timing: no worker processes, no validation, checkpoints or log output."""
    cfg = copy.deepcopy(cfg)
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    for key in ("val_dataloader", "val_cfg", "val_evaluator",
                "test_dataloader", "test_cfg", "test_evaluator"):
        cfg[key] = None
    cfg.default_hooks.checkpoint = None
    cfg.log_level = "WARNING"
    slug = name.replace(" + ", "_").replace(" ", "_").replace("-", "")
    cfg.work_dir = str(work_dir / slug)
    cfg.experiment_name = f"train_overhead_{slug}"  # a logger and message hub of its own
    return cfg


@dataclass
class Variant:
    """A runner ready to train, advanced block by block."""

    name: str
    runner: Any
    setup_s: float
    setup_bytes: int
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)

    def step(self, iters: int) -> None:
        """``iters`` iterations, as ``IterBasedTrainLoop.run`` does them."""
        loop = self.runner.train_loop
        for _ in range(iters):
            self.runner.model.train()
            loop.run_iter(next(loop.dataloader_iterator))

    def describe(self) -> str:
        """The components that make the variant: sampler, classification loss, hooks, pipeline."""
        runner = self.runner
        hooks = [type(h).__name__ for h in runner.hooks if type(h).__module__.startswith("mmimb")]
        loader = runner.train_dataloader
        pipeline = [type(t).__name__ for t in loader.dataset.pipeline.transforms]
        # The configured sampler sits inside mmdet's batch sampler (AspectRatioBatchSampler).
        sampler = getattr(loader.batch_sampler, "sampler", loader.sampler)
        return (f"{self.name}: {type(sampler).__name__}, "
                f"{type(runner.model.bbox_head.loss_cls).__name__}, mmimb hooks {hooks}, "
                f"pipeline {' > '.join(pipeline)}")

    def close(self) -> None:
        for hook in ("after_train_epoch", "after_train", "after_run"):
            self.runner.call_hook(hook)


def prepare(runner: Any) -> None:
    """What ``Runner.train`` does before the loop's first iteration (mmengine 0.10)."""
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.scale_lr(runner.optim_wrapper, runner.auto_scale_lr)
    runner.param_schedulers = runner.build_param_scheduler(runner.param_schedulers)
    runner.call_hook("before_run")
    runner._init_model_weights()
    runner.load_or_resume()
    loop = runner.train_loop
    runner.optim_wrapper.initialize_count_status(runner.model, loop.iter, loop.max_iters)
    runner.call_hook("before_train")
    runner.call_hook("before_train_epoch")


def build_variant(name: str, cfg: Config, work_dir: Path, warmup: int) -> Variant:
    """Build the runner of ``cfg``, prepare it and run ``warmup`` untimed iterations."""
    tracemalloc.start()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' "loading annotations"
        runner = Runner.from_cfg(benchmark_config(cfg, name, work_dir))
        prepare(runner)
    setup_s = time.perf_counter() - start
    variant = Variant(name, runner, setup_s, tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    variant.step(warmup)
    return variant


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def peak_rss(into: list[int]) -> Iterator[None]:
    """Append the peak resident set (KiB) reached inside the block to ``into`` (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        yield
        return
    yield
    peak = _status_kib("VmHWM")
    if peak is not None:
        into.append(peak)


def timed_rounds(variants: list[Variant], iters: int, rounds: int) -> None:
    """Run ``rounds`` rounds of one ``iters``-iteration block per variant, order rotated."""
    for r in range(rounds):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            with peak_rss(variant.peak_rss_kib):
                wall, cpu = time.perf_counter(), time.process_time()
                variant.step(iters)
                variant.wall_s.append((time.perf_counter() - wall) / iters)
                variant.cpu_s.append((time.process_time() - cpu) / iters)


def run(iters: int, rounds: int, warmup: int, work_dir: Path) -> list[Variant]:
    """Build every variant in this process and time them interleaved (see the module doc)."""
    init_default_scope("mmdet")
    variants = [build_variant(name, cfg, work_dir, warmup)
                for name, cfg in variant_configs().items()]
    timed_rounds(variants, iters, rounds)
    for variant in variants:
        variant.close()
    return variants


def summarise(variants: list[Variant]) -> list[dict[str, Any]]:
    """One row per variant: medians, ratios to the baseline round by round, memory."""
    base = variants[0]
    rows = []
    for v in variants:
        wall_ratios = [t / b for t, b in zip(v.wall_s, base.wall_s, strict=True)]
        cpu_ratios = [t / b for t, b in zip(v.cpu_s, base.cpu_s, strict=True)]
        rows.append(dict(
            variant=v.name, wall_s=v.wall_s, cpu_s=v.cpu_s,
            median_wall_s=statistics.median(v.wall_s), median_cpu_s=statistics.median(v.cpu_s),
            wall_ratios=wall_ratios, median_wall_ratio=statistics.median(wall_ratios),
            median_cpu_ratio=statistics.median(cpu_ratios), target=TARGETS.get(v.name),
            setup_s=v.setup_s, setup_mib=v.setup_bytes / 2**20,
            peak_rss_mib=max(v.peak_rss_kib) / 1024 if v.peak_rss_kib else None))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| variant | ms/iter wall | ratio (wall) | ratio range | ms/iter CPU | ratio (CPU) "
          "| target | set-up s | set-up MiB | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = "n/a" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        target = f"<= {r['target']:.2f}x" if r["variant"] != "baseline" else "-"
        print(f"| {r['variant']} | {r['median_wall_s'] * 1e3:.1f} | "
              f"{r['median_wall_ratio']:.3f}x | {min(r['wall_ratios']):.3f} - "
              f"{max(r['wall_ratios']):.3f} | {r['median_cpu_s'] * 1e3:.1f} | "
              f"{r['median_cpu_ratio']:.3f}x | {target} | {r['setup_s']:.1f} | "
              f"{r['setup_mib']:.1f} | {peak} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5, help="iterations per block")
    parser.add_argument("--rounds", type=int, default=10, help="timed blocks per variant")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed iterations per variant after its set-up")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine, idle threads of a larger "
                             "pool spin on busy cores and blur CPU time and wall time alike)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for name in ("iters", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mmimb-train-overhead-") as work_dir:
        variants = run(args.iters, args.rounds, args.warmup, Path(work_dir))
    rows = summarise(variants)
    load_after = os.getloadavg()
    process_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"demo RetinaNet, batch 8 at 128x128, {args.rounds} rounds x {args.iters} iterations "
          f"per variant (after {args.warmup} warm-up), interleaved in one process; "
          f"num_workers=0 (data loading timed in the training process); "
          f"torch threads: {torch.get_num_threads()}; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after\n")
    print_table(rows)
    print(f"\npeak RSS of the process over the whole run: {process_peak_mib:.0f} MiB\n")
    for variant in variants:
        print("- " + variant.describe())
    if args.json:
        args.json.write_text(json.dumps(dict(argv=sys.argv, load_average=[load_before,
                                                                         load_after],
                                             torch_threads=torch.get_num_threads(), rows=rows,
                                             process_peak_rss_mib=process_peak_mib), indent=2))


if __name__ == "__main__":
    main()
