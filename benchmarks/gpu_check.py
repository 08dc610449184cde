"""GPU check of the loss cores: CUDA results equal CPU ones, and the fused path's speed on CUDA.

Runs with torch alone (no mmcv/mmdet/mmengine), as on a lent accelerator machine: it loads
``mmimb/losses/functional.py`` by path, not through the package. It checks, on random inputs and
on the device (CUDA when available, else the CPU, which only checks the script itself):

* ``sigmoid_focal_loss`` equals ``torchvision.ops.sigmoid_focal_loss`` (scalar alpha) when
  torchvision is installed, and the CPU result;
* the fused ``sigmoid_focal_loss_sum`` (compiled and eager) equals the element-wise form in value
  and gradient, with per-class alpha and class weights;
* ``softmax_focal_loss`` equals ``cross_entropy`` at ``gamma=0`` in value and gradient;
* fp16/bf16 logits of +-100 stay finite;

then times forward+backward of the fused loss against torchvision's at 200,000 x 80 and prints
the ratio and peak CUDA memory. Exit status 1 when a check fails.

Usage::

    python benchmarks/gpu_check.py            # or: bash benchmarks/gpu_check.sh
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_functional() -> Any:
    spec = importlib.util.spec_from_file_location(
        "mmimb_functional", ROOT / "mmimb" / "losses" / "functional.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(name: str, ok: bool, failures: list[str]) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if not ok:
        failures.append(name)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return torch.allclose(a.float().cpu(), b.float().cpu(), rtol=tol, atol=tol)


def timed(fn: Any, device: torch.device, repeats: int = 10) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> int:
    F = load_functional()  # noqa: N806
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    failures: list[str] = []
    g = torch.Generator().manual_seed(0)
    n, c = 4096, 80
    x_cpu = torch.randn(n, c, generator=g) * 3
    labels_cpu = torch.randint(0, c + 1, (n,), generator=g)
    alpha_cpu = torch.rand(c, generator=g)
    w_cpu = torch.rand(c, generator=g) + 0.5
    x, labels, alpha, w = (t.to(device) for t in (x_cpu, labels_cpu, alpha_cpu, w_cpu))

    ref_cpu = F.sigmoid_focal_loss(x_cpu, labels_cpu, alpha_cpu, 2.0, w_cpu)
    dev = F.sigmoid_focal_loss(x, labels, alpha, 2.0, w)
    check("element-wise focal: device == cpu", close(dev, ref_cpu), failures)
    try:
        from torchvision.ops import sigmoid_focal_loss as tv_focal

        onehot = F.one_hot_targets(labels, c, x.dtype)
        check("element-wise focal == torchvision (alpha=0.25)",
              close(F.sigmoid_focal_loss(x, labels, 0.25, 2.0), tv_focal(x, onehot, 0.25, 2.0),
                    1e-6), failures)
    except ImportError:
        print("skip torchvision comparison (not installed)")

    for use_compile in (False, True):
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        fused = F.sigmoid_focal_loss_sum(xa, labels, alpha, 2.0, w, use_compile=use_compile)
        plain = F.sigmoid_focal_loss(xb, labels, alpha, 2.0, w).sum()
        fused.backward()
        plain.backward()
        tag = "compiled" if use_compile else "eager"
        check(f"fused focal ({tag}) == element-wise: value", close(fused, plain, 1e-4), failures)
        check(f"fused focal ({tag}) == element-wise: gradient", close(xa.grad, xb.grad, 1e-4),
              failures)

    k = c + 1
    xs = (torch.randn(n, k, generator=g) * 3).to(device)
    xa, xb = xs.clone().requires_grad_(True), xs.clone().requires_grad_(True)
    sf = F.softmax_focal_loss(xa, labels, gamma=0.0).sum()
    ce = torch.nn.functional.cross_entropy(xb, labels, reduction="sum")
    sf.backward()
    ce.backward()
    check("softmax focal gamma=0 == cross_entropy (value, gradient)",
          close(sf, ce, 1e-4) and close(xa.grad, xb.grad, 1e-4), failures)

    for dtype in (torch.float16, torch.bfloat16):
        xh = (torch.sign(x) * 100).to(dtype).requires_grad_(True)
        loss = F.sigmoid_focal_loss_sum(xh, labels, alpha, 2.0, w, use_compile=False)
        loss.backward()
        check(f"{dtype} logits of +-100 stay finite",
              bool(torch.isfinite(loss)) and bool(torch.isfinite(xh.grad).all()), failures)

    n_big = 200_000
    xb_big = torch.randn(n_big, c, device=device)
    lb_big = torch.randint(0, c + 1, (n_big,), device=device)
    w_big = torch.rand(c, device=device) + 0.5

    def run_mmimb() -> None:
        xx = xb_big.detach().requires_grad_(True)
        F.sigmoid_focal_loss_sum(xx, lb_big, 0.25, 2.0, w_big).backward()

    timings = {"mmimb fused": run_mmimb}
    try:
        from torchvision.ops import sigmoid_focal_loss as tv_focal

        onehot_big = F.one_hot_targets(lb_big, c, torch.float32)

        def run_tv() -> None:
            xx = xb_big.detach().requires_grad_(True)
            tv_focal(xx, onehot_big, 0.25, 2.0, reduction="sum").backward()

        timings["torchvision"] = run_tv
    except ImportError:
        pass
    results = {}
    for name, fn in timings.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms = timed(fn, device)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        results[name] = ms
        print(f"{name:>12}: {ms:8.2f} ms forward+backward at {n_big}x{c}, peak {peak:.0f} MiB")
    if "torchvision" in results:
        print(f"speed-up vs torchvision: {results['torchvision'] / results['mmimb fused']:.2f}x")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
