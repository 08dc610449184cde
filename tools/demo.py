"""Train detectors on the embedded long-tail dataset and print their long-tail AP tables.

With no arguments it runs the two demo baselines (tiny RetinaNet and tiny Faster R-CNN). Give
other configs to compare methods at the same budget; each run goes through ``tools/train.py``
in its own process, and a summary is written to ``WORK_ROOT/summary.md`` and ``summary.json``.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from mmimb.evaluation import compare_table, format_table, load_result

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = [
    "configs/retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py",
    "configs/faster_rcnn/faster-rcnn_r18tiny_fpn_1k_ltsynth.py",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="*", default=DEMO_CONFIGS, help="configs to train")
    parser.add_argument("--work-root", default="work_dirs/demo", help="one work dir per config")
    parser.add_argument("--cfg-options", nargs="+", default=[],
                        help="passed to every tools/train.py run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work_root = Path(args.work_root)
    results, seconds = {}, {}
    for config in args.configs:
        name = Path(config).stem
        work_dir = work_root / name
        cmd = [sys.executable, str(ROOT / "tools/train.py"), config, "--work-dir", str(work_dir)]
        if args.cfg_options:
            cmd += ["--cfg-options", *args.cfg_options]
        print(f"[demo] training {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        seconds[name] = time.perf_counter() - start
        report = sorted(work_dir.glob("*/long_tail.json"))[-1]
        results[name] = load_result(report)
        print(f"\n[demo] {name}: {seconds[name]:.0f} s wall, report {report}\n")
        print(format_table(results[name]) + "\n", flush=True)
    summary = compare_table(results)
    lines = [f"- {name}: {s:.0f} s of training and evaluation" for name, s in seconds.items()]
    text = summary + "\n\n" + "\n".join(lines) + "\n"
    print(text)
    work_root.mkdir(parents=True, exist_ok=True)
    (work_root / "summary.md").write_text(text)
    (work_root / "summary.json").write_text(json.dumps(
        {name: {"seconds": seconds[name], **results[name].flat()} for name in results}, indent=1))


if __name__ == "__main__":
    main()
