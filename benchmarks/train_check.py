"""Train the demo detectors briefly on the GPU and on the CPU: iteration time, memory, mAP, and
the share of the time spent in mmimb's CUDA fallback for mmcv's ops.

For each config (the demo RetinaNet and Faster R-CNN on the embedded synthetic set), one
training of ``--iters`` iterations on CUDA (with ``--amp``: mmengine's ``AmpOptimWrapper``, as
``tools/train.py --amp``) ends with the config's evaluation (``LongTailMetric``), then a
training of ``--cpu-iters`` iterations on the CPU (``CUDA_VISIBLE_DEVICES=''``) gives the CPU's
iteration time. Each training runs in its own process (``--worker``) with the standard runner.

Reported per run: the median iteration time of the logged iterations after the first 10%
(mmengine's ``time``), the peak CUDA memory (``torch.cuda.max_memory_allocated``), the final
mAP and rare-group AP, and, when mmcv has no CUDA kernels and ``import mmimb`` routed its ops
(``mmimb.ops_fallback``), the seconds per iteration spent in the fallbacks (timed with a CUDA
synchronisation around each call, which slows the run slightly) and their share of the
iteration. Without a GPU the script trains on the CPU only and says so. The numbers are printed
as a Markdown table and written to ``--out`` as JSON.

Usage::

    python benchmarks/train_check.py                        # 200 iterations on CUDA, 20 on CPU
    python benchmarks/train_check.py --iters 4 --cpu-iters 2   # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("configs/retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py",
           "configs/faster_rcnn/faster-rcnn_r18tiny_fpn_1k_ltsynth.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--iters", type=int, default=200, help="iterations on CUDA")
    parser.add_argument("--cpu-iters", type=int, default=20, help="iterations on the CPU")
    parser.add_argument("--no-amp", action="store_true", help="train on CUDA in float32")
    parser.add_argument("--work-root", help="folder of the runs (default: a temporary one)")
    parser.add_argument("--out", default="train_check.json", help="the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one training: its JSON output
    args = parser.parse_args(argv)
    for name in ("iters", "cpu_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _time_fallbacks(totals: dict[str, list[float]]) -> bool:
    """Wrap the fallbacks that ``import mmimb`` routed to, so that their time adds to
    ``totals[name] = [calls, seconds]``; whether any was routed."""
    import mmcv._ext
    import torch

    from mmimb.ops_fallback import RoutedKernel

    routed = [k for k in vars(mmcv._ext).values()
              if isinstance(k, RoutedKernel) and k.fallback is not None]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for kernel in routed:
        def timed(*args: Any, _fn: Any = kernel.fallback, _name: str = kernel.name,
                  **kwargs: Any) -> Any:
            sync()
            start = time.perf_counter()
            out = _fn(*args, **kwargs)
            sync()
            entry = totals.setdefault(_name, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - start
            return out
        kernel.fallback = timed
    return bool(routed)


def train_once(config: str, iters: int, amp: bool, work_dir: Path) -> dict[str, Any]:
    """Train ``config`` for ``iters`` iterations in this process, evaluate, and measure."""
    import torch
    from mmengine.config import Config

    import mmimb  # noqa: F401  (registers mmimb; routes mmcv's ops when CUDA kernels are missing)
    from mmimb.tool_utils import build_runner

    cfg = Config.fromfile(str(ROOT / config))
    cfg.work_dir = str(work_dir)
    cfg.launcher = "none"
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = max(1, min(10, iters // 4))
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    cuda = torch.cuda.is_available()
    totals: dict[str, list[float]] = {}
    routed = cuda and _time_fallbacks(totals)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    build_runner(cfg).train()
    wall = time.perf_counter() - started
    scalars = sorted(work_dir.glob("*/vis_data/scalars.json"))[-1]
    lines = [json.loads(line) for line in scalars.read_text().splitlines()]
    times = [entry["time"] for entry in lines if "time" in entry and "loss" in entry]
    final = [entry for entry in lines if "lt/mAP" in entry][-1]
    iter_s = statistics.median(times[len(times) // 10:])
    fallback_s = sum(seconds for _, seconds in totals.values()) / iters
    return {
        "config": config, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "iters": iters, "amp": amp, "iter_s": iter_s, "wall_s": wall,
        "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "mAP": final["lt/mAP"], "AP_rare": final.get("lt/AP_rare"),
        "fallback_routed": routed,
        "fallback_calls": {name: int(calls) for name, (calls, _) in totals.items()},
        "fallback_s_per_iter": fallback_s if routed else None,
        "fallback_share": fallback_s / iter_s if routed else None,
    }


def _run_worker(config: str, iters: int, amp: bool, work_dir: Path, cpu: bool) -> dict[str, Any]:
    out = work_dir / "result.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="") if cpu else dict(os.environ)
    cmd = [sys.executable, __file__, "--worker", config, "--iters", str(iters),
           "--work-root", str(work_dir), "--out", str(out)] + ([] if amp else ["--no-amp"])
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return dict(json.loads(out.read_text()))


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = train_once(args.worker, args.iters, not args.no_amp, Path(args.work_root))
        Path(args.out).write_text(json.dumps(result, indent=1))
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        print("[train_check] torch sees no CUDA device: training on the CPU only")
    root = Path(args.work_root or tempfile.mkdtemp(prefix="train_check_"))
    results = []
    for config in args.configs:
        name = Path(config).stem
        if cuda:
            results.append(_run_worker(config, args.iters, not args.no_amp,
                                       root / name / "cuda", cpu=False))
        results.append(_run_worker(config, args.cpu_iters, False, root / name / "cpu", cpu=True))
    print("| config | device | iterations | AMP | s/iter | CPU/GPU time | peak MiB | mAP | "
          "rare AP | fallback s/iter (share) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    cpu_time = {r["config"]: r["iter_s"] for r in results if r["device"] == "cpu"}
    for r in results:
        speedup = cpu_time[r["config"]] / r["iter_s"] if r["device"] != "cpu" else None
        fallback = ("-" if r["fallback_s_per_iter"] is None else
                    f"{r['fallback_s_per_iter']:.4f} ({r['fallback_share']:.0%})")
        print(f"| {Path(r['config']).stem} | {r['device']} | {r['iters']} | "
              f"{'yes' if r['amp'] else 'no'} | {r['iter_s']:.3f} | {_cell(speedup, '.1f')} | "
              f"{_cell(r['peak_mem_mib'], '.0f')} | {r['mAP']:.3f} | "
              f"{_cell(r['AP_rare'], '.3f')} | {fallback} |")
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"[train_check] results: {args.out}; runs: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
