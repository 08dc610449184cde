"""Forward+backward time and peak memory of the losses, against the existing tools.

Two suites. ``--suite focal`` (default): sigmoid focal losses at RetinaNet-like shapes.
``--suite roi``: the long-tail RoI-head losses against softmax cross-entropy (mmdet's
``CrossEntropyLoss``) on one RoI batch (default 512 RoIs x 16 images = 8192 rows, 1204 classes,
a quarter foreground as mmdet's RoI sampler draws them), each loss given the classifier width it
asks the head for (``get_cls_channels``) and long-tailed class counts.

The focal suite:

Compares, on the same random inputs (float32 logits ``[N, C]``, integer labels with ``C`` as
background, per-anchor weights as ``RetinaHead`` passes them):

* ``torchvision``: ``torchvision.ops.sigmoid_focal_loss`` (unweighted; its float one-hot target
  is built outside the timed region, since that is its API);
* ``mmdet``: mmdet's ``FocalLoss`` (its CPU path, ``py_sigmoid_focal_loss``, one-hot inside);
* ``mmimb compiled``: ``ClassBalancedFocalLoss`` with class-balanced weights, fused path through
  ``torch.compile``;
* ``mmimb eager``: the same loss with ``use_compile=False``;
* ``mmimb element-wise``: the general form (``reduction='none'`` then a weighted sum).

Time: the median (and minimum) of ``--repeats`` runs of ``loss.backward()`` after one warm-up
run per variant (which also compiles); the variants alternate within each repeat, so load from
other processes affects them alike. Ratios are taken within this one run.

Peak memory: each variant runs in a fresh subprocess that builds the inputs, warms up, then
resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, Linux) and runs forward+backward
once; the reported peak is ``VmHWM`` minus the RSS just before the run, i.e. every byte the
forward+backward pass had to touch above its inputs, the gradient included. The subprocess runs
with ``MALLOC_MMAP_THRESHOLD_=65536``, so glibc maps every tensor on its own and returns it on
free: RSS follows torch's live allocations.

Bandwidth floor: the bytes a loss must move at least (logits read + gradient written, 8 bytes
per element in float32) divided by the copy bandwidth measured here with ``Tensor.copy_``
(read + write). ``x floor`` is a variant's time over that floor.

Usage::

    python benchmarks/losses.py                      # 200000x80 and 20000x1203
    python benchmarks/losses.py --shapes 50000x80 --repeats 3
    python benchmarks/losses.py --suite roi          # 8192 RoIs x 1204 classes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS
from torchvision.ops import sigmoid_focal_loss as tv_focal

from mmimb.losses import ClassBalancedFocalLoss, sigmoid_focal_loss

VARIANTS = ("torchvision", "mmdet", "mmimb compiled", "mmimb eager", "mmimb element-wise")
#: RoI suite: name -> loss config (the first is the reference).
ROI_LOSSES: dict[str, dict] = {
    "CrossEntropyLoss (mmdet)": dict(type="CrossEntropyLoss", use_sigmoid=False),
    "BalancedSoftmaxLoss": dict(type="BalancedSoftmaxLoss", class_counts="auto"),
    "PostHocLogitAdjustedLoss": dict(type="PostHocLogitAdjustedLoss", class_counts="auto"),
    "EffectiveClassMarginLoss": dict(type="EffectiveClassMarginLoss", class_counts="auto"),
    "FederatedLoss": dict(type="FederatedLoss", class_counts="auto"),
    "EqualizationLossV2": dict(type="EqualizationLossV2"),
    "SeesawLoss (mmdet)": dict(type="SeesawLoss", num_classes=None),
    "EQLV2Loss (mmdet)": dict(type="EQLV2Loss", num_classes=None),
}
ALPHA, GAMMA = 0.25, 2.0


def parse_shape(text: str) -> tuple[int, int]:
    n, c = text.lower().split("x")
    return int(n), int(c)


def make_inputs(n: int, c: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Logits, labels (1% positives, the rest background ``c``), weights and long-tail counts."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.full((n,), c, dtype=torch.long)
    pos = torch.rand(n, generator=gen) < 0.01
    labels[pos] = torch.randint(0, c, (int(pos.sum()),), generator=gen)
    return dict(
        pred=torch.randn(n, c, generator=gen) * 3,
        labels=labels,
        weight=torch.ones(n),
        counts=(10000.0 / torch.arange(1, c + 1)).floor(),
        one_hot=torch.nn.functional.one_hot(labels, c + 1)[:, :c].float(),
    )


def make_step(variant: str,
              inputs: dict[str, torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """A closure running forward+backward of ``variant`` on ``inputs``, and its leaf logits."""
    pred = inputs["pred"].clone().requires_grad_()
    labels, weight, one_hot = inputs["labels"], inputs["weight"], inputs["one_hot"]
    avg_factor = float(max((labels < pred.shape[1]).sum().item(), 1))
    counts = inputs["counts"].tolist()
    cb = ClassBalancedFocalLoss(gamma=GAMMA, alpha=ALPHA, class_counts=counts, beta=0.999,
                                use_compile=variant == "mmimb compiled")
    focal = FocalLoss(gamma=GAMMA, alpha=ALPHA)

    def loss() -> torch.Tensor:
        if variant == "torchvision":
            return tv_focal(pred, one_hot, ALPHA, GAMMA, reduction="sum") / avg_factor
        if variant == "mmdet":
            return focal(pred, labels, weight, avg_factor)
        if variant == "mmimb element-wise":
            elementwise = sigmoid_focal_loss(pred, labels, ALPHA, GAMMA, cb.class_weights())
            return (elementwise * weight[:, None]).sum() / avg_factor
        return cb(pred, labels, weight, avg_factor)

    def step() -> None:
        pred.grad = None
        loss().backward()

    return step, pred


def make_roi_step(variant: str, n: int, c: int,
                  seed: int = 0) -> tuple[Callable[[], None], torch.Tensor]:
    """Forward+backward of RoI loss ``variant`` on ``n`` RoIs of ``c`` classes, and its logits."""
    import mmimb  # noqa: F401  (registers the losses)

    cfg = dict(ROI_LOSSES[variant])
    if "num_classes" in cfg:
        cfg["num_classes"] = c
    loss_fn = MODELS.build(cfg)
    width = (loss_fn.get_cls_channels(c) if getattr(loss_fn, "custom_cls_channels", False)
             else c + 1)
    if callable(getattr(loss_fn, "set_class_counts", None)):
        loss_fn.set_class_counts((10000.0 / torch.arange(1, c + 1)).floor().numpy())
    gen = torch.Generator().manual_seed(seed)
    labels = torch.full((n,), c, dtype=torch.long)
    pos = torch.rand(n, generator=gen) < 0.25
    labels[pos] = torch.randint(0, c, (int(pos.sum()),), generator=gen)
    pred = (torch.randn(n, width, generator=gen) * 3).requires_grad_()
    weight = torch.ones(n)
    loss_fn.train()

    def step() -> None:
        pred.grad = None
        out = loss_fn(pred, labels, weight, avg_factor=float(n))
        total = sum(out.values()) if isinstance(out, dict) else out
        total.backward()

    return step, pred


def bench_roi(n: int, c: int, repeats: int) -> list[dict[str, float | str]]:
    steps = {v: make_roi_step(v, n, c)[0] for v in ROI_LOSSES}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {v: [] for v in ROI_LOSSES}
    for _ in range(repeats):
        for variant, step in steps.items():
            times[variant].append(_timed(step))
    del steps
    rows: list[dict[str, float | str]] = [
        dict(variant=v, median_s=statistics.median(times[v]), min_s=min(times[v]),
             peak_mib=peak_in_subprocess(v, n, c, suite="roi") / 2**20) for v in ROI_LOSSES]
    ref = rows[0]
    for row in rows:
        row["time_vs_ce"] = float(row["median_s"]) / float(ref["median_s"])
        row["memory_vs_ce"] = float(row["peak_mib"]) / float(ref["peak_mib"])
    return rows


def print_roi_table(n: int, c: int, rows: list[dict[str, float | str]]) -> None:
    print(f"\n### {n} RoIs x {c} classes (float32, forward + backward)\n")
    print("| loss | median ms | min ms | time vs CE | peak MiB | memory vs CE |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {float(r['median_s']) * 1e3:.1f} | "
              f"{float(r['min_s']) * 1e3:.1f} | {float(r['time_vs_ce']):.2f}x | "
              f"{float(r['peak_mib']):.0f} | {float(r['memory_vs_ce']):.2f} |")


def copy_bandwidth(num_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes per second of ``dst.copy_(src)`` counting the read and the write."""
    src = torch.rand(num_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * num_bytes / best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak_bytes(variant: str, n: int, c: int, suite: str = "focal") -> int:
    """Peak RSS above the start of one forward+backward (run in a fresh subprocess)."""
    step, pred = (make_roi_step(variant, n, c) if suite == "roi"
                  else make_step(variant, make_inputs(n, c)))
    step()  # warm-up, compilation included, before the counter is reset
    step()
    pred.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) * 1024


def peak_in_subprocess(variant: str, n: int, c: int, suite: str = "focal") -> int:
    # A fixed mmap threshold makes glibc map every block >= 64 KiB on its own and unmap it on
    # free, so RSS follows the live tensors instead of a heap that keeps freed memory.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, __file__, "--peak-of", variant, "--shapes", f"{n}x{c}",
         "--suite", suite],
        check=True, capture_output=True, text=True, env=env)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def bench_shape(n: int, c: int, repeats: int, bandwidth: float) -> list[dict[str, float | str]]:
    inputs = make_inputs(n, c)
    steps = {v: make_step(v, inputs)[0] for v in VARIANTS}
    for step in steps.values():
        step()  # warm-up (compiles the fused path)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for variant, step in steps.items():
            times[variant].append(_timed(step))
    del steps
    floor = 8 * n * c / bandwidth
    rows: list[dict[str, float | str]] = []
    for variant in VARIANTS:
        rows.append(dict(variant=variant, median_s=statistics.median(times[variant]),
                         min_s=min(times[variant]), peak_mib=peak_in_subprocess(variant, n, c)
                         / 2**20))
    reference = next(r for r in rows if r["variant"] == "torchvision")
    for row in rows:
        row["speedup_vs_torchvision"] = float(reference["median_s"]) / float(row["median_s"])
        row["memory_vs_torchvision"] = float(row["peak_mib"]) / float(reference["peak_mib"])
        row["x_floor"] = float(row["median_s"]) / floor
    return rows


def print_table(n: int, c: int, rows: list[dict[str, float | str]], bandwidth: float) -> None:
    floor_ms = 8 * n * c / bandwidth * 1e3
    print(f"\n### N={n} anchors x C={c} classes (float32; bandwidth floor {floor_ms:.1f} ms)\n")
    print("| variant | median ms | min ms | speed-up vs torchvision | peak MiB | "
          "memory vs torchvision | x floor |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {float(r['median_s']) * 1e3:.1f} | "
              f"{float(r['min_s']) * 1e3:.1f} | {float(r['speedup_vs_torchvision']):.2f}x | "
              f"{float(r['peak_mib']):.0f} | {float(r['memory_vs_torchvision']):.2f} | "
              f"{float(r['x_floor']):.1f} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("focal", "roi"), default="focal")
    parser.add_argument("--shapes", nargs="+",
                        help="N x C problem sizes (focal: 200000x80 20000x1203; roi: 8192x1204)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--peak-of", choices=(*VARIANTS, *ROI_LOSSES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shapes is None:
        args.shapes = ["8192x1204"] if args.suite == "roi" else ["200000x80", "20000x1203"]
    return args


def main() -> None:
    args = parse_args()
    shapes = [parse_shape(s) for s in args.shapes]
    if args.peak_of:
        print(json.dumps(dict(peak_bytes=measure_peak_bytes(args.peak_of, *shapes[0],
                                                            suite=args.suite))))
        return
    print("command: python " + " ".join(sys.argv))
    if args.suite == "roi":
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        roi = {f"{n}x{c}": bench_roi(n, c, args.repeats) for n, c in shapes}
        for key, rows in roi.items():
            print_roi_table(*parse_shape(key), rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(results=roi), f, indent=2)
        return
    bandwidth = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"copy bandwidth {bandwidth / 1e9:.2f} GB/s (read + write)")
    results = {}
    for n, c in shapes:
        rows = bench_shape(n, c, args.repeats, bandwidth)
        print_table(n, c, rows, bandwidth)
        results[f"{n}x{c}"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(bandwidth_bytes_per_s=bandwidth, results=results), f, indent=2)


if __name__ == "__main__":
    main()
