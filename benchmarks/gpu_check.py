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
* the long-tail loss cores (EQLv2, equalized focal, federated, logit-adjusted CE, ECM, and the
  per-class gradient sums that feed EQLv2/EFL) give the CPU's value and gradient on the device,
  and stay finite on fp16 logits of +-100;

then times forward+backward of the fused loss against torchvision's at 200,000 x 80, and of
each long-tail core at LVIS's RoI-head shape (8,192 RoIs x 1,203 classes) against torch's
binary / softmax cross-entropy of the same shape, and prints the ratios and peak CUDA memory.
Exit status 1 when a check fails.

Usage::

    python benchmarks/gpu_check.py            # or: bash benchmarks/gpu_check.sh
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_module(name: str) -> Any:
    """``mmimb.losses.<name>`` loaded by path, without running ``mmimb/__init__.py`` (which
    imports mmdet); the torch-only loss modules import each other under their package names."""
    for package, path in (("mmimb", ROOT / "mmimb"), ("mmimb.losses", ROOT / "mmimb" / "losses")):
        if package not in sys.modules:
            stub = types.ModuleType(package)
            stub.__path__ = [str(path)]
            sys.modules[package] = stub
    full = f"mmimb.losses.{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, ROOT / "mmimb" / "losses" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module


def load_functional() -> Any:
    return load_module("functional")


def value_and_grad(fn: Any, pred: torch.Tensor,
                   args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(pred, args)`` summed (its first element when it returns a tuple) and its autograd
    gradient with respect to ``pred``."""
    x = pred.detach().clone().requires_grad_(True)
    out = fn(x, args)
    loss = (out[0] if isinstance(out, tuple) else out).float().sum()
    loss.backward()
    assert x.grad is not None
    return loss.detach(), x.grad


def peak_timed(fn: Any, device: torch.device) -> tuple[float, float]:
    """Milliseconds per call of ``fn`` and its peak CUDA memory in MiB (NaN on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ms = timed(fn, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return ms, peak


def time_long_tail_losses(device: torch.device, cases: dict[str, tuple[int, Any]], gg: Any,
                          fed: Any, la: Any) -> None:
    """Forward+backward of each long-tail core at LVIS's RoI-head shape against torch's
    sigmoid (``binary_cross_entropy_with_logits``) or softmax (``cross_entropy``) loss."""
    g = torch.Generator().manual_seed(2)
    n, c = 8192, 1203
    labels = torch.randint(0, c + 1, (n,), generator=g).to(device)
    counts = torch.randint(1, 10_000, (c,), generator=g).float()
    classes = fed.sample_federated_classes(
        labels.cpu(), fed.federated_class_weights(counts), 50, generator=g).to(device)
    margin, class_weight = la.effective_class_margins(counts)
    args = (labels, (torch.rand(c, generator=g) * 100).to(device),
            (torch.rand(c, generator=g) * 1000).to(device), classes,
            la.logit_adjustment(counts, 1.0).to(device), margin.to(device),
            class_weight.to(device))
    base = [torch.randn(n, c, device=device), torch.randn(n, c + 1, device=device)]

    def bce(x: torch.Tensor, t: tuple[torch.Tensor, ...]) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(t[0], x.shape[1] + 1)[:, :x.shape[1]].to(x.dtype)
        return torch.nn.functional.binary_cross_entropy_with_logits(x, onehot, reduction="sum")

    def ce(x: torch.Tensor, t: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(x, t[0], reduction="sum")

    softmax = {"logit-adjusted CE"}
    reference: dict[str, float] = {}
    for name, fn in (("torch BCE", bce), ("torch CE", ce)):
        ms, peak = peak_timed(lambda fn=fn: value_and_grad(fn, base[1], args), device)
        reference[name] = ms
        print(f"{name:>18}: {ms:8.2f} ms forward+backward at {n}x{c + 1}, peak {peak:.0f} MiB")
    for name, (background, fn) in cases.items():
        x = base[background]
        ms, peak = peak_timed(lambda fn=fn, x=x: value_and_grad(fn, x, args), device)
        ref = "torch CE" if name in softmax else "torch BCE"
        print(f"{name:>18}: {ms:8.2f} ms forward+backward at {n}x{x.shape[1]}, peak {peak:.0f} MiB,"
              f" {ms / reference[ref]:.2f}x {ref}")


def check_long_tail_losses(device: torch.device, failures: list[str]) -> None:
    """The long-tail loss cores: device == CPU in value and gradient, finite on fp16 +-100."""
    gg = load_module("functional_gradient_guided")
    fed = load_module("functional_federated")
    la = load_module("functional_logit_adjust")
    g = torch.Generator().manual_seed(1)
    n, c = 2048, 40
    labels = torch.randint(0, c + 1, (n,), generator=g)
    counts = torch.randint(1, 2000, (c,), generator=g).float()
    pos_grad = torch.rand(c, generator=g) * 100
    neg_grad = torch.rand(c, generator=g) * 1000
    classes = fed.sample_federated_classes(
        labels, fed.federated_class_weights(counts), 20, generator=g)
    adjustment = la.logit_adjustment(counts, 1.0)
    margin, class_weight = la.effective_class_margins(counts)
    # name: (whether pred has a background column, loss of (pred, args))
    cases: dict[str, tuple[int, Any]] = {
        "EQLv2": (1, lambda x, t: gg.equalization_loss_v2(x, t[0], t[1], t[2])),
        "equalized focal": (0, lambda x, t: gg.equalized_focal_loss(x, t[0], t[1], t[2])),
        "federated": (0, lambda x, t: fed.federated_loss(x, t[0], t[3])),
        "logit-adjusted CE": (1, lambda x, t: la.logit_adjusted_cross_entropy(x, t[0], t[4])),
        "ECM": (1, lambda x, t: la.ecm_loss(x, t[0], t[5], t[6])),
    }
    cpu_args = (labels, pos_grad, neg_grad, classes, adjustment, margin, class_weight)
    dev_args = tuple(a.to(device) for a in cpu_args)
    for name, (background, fn) in cases.items():
        x = torch.randn(n, c + background, generator=g) * 3
        ref = value_and_grad(fn, x, cpu_args)
        dev = value_and_grad(fn, x.to(device), dev_args)
        check(f"{name}: device == cpu (value, gradient)",
              close(dev[0], ref[0], 1e-4) and close(dev[1], ref[1], 1e-4), failures)
        xh = (torch.sign(x) * 100).to(device=device, dtype=torch.float16)
        loss, grad = value_and_grad(fn, xh, dev_args)
        check(f"{name}: fp16 logits of +-100 stay finite",
              bool(torch.isfinite(loss)) and bool(torch.isfinite(grad).all()), failures)
    time_long_tail_losses(device, cases, gg, fed, la)
    grad = torch.randn(n, c + 1, generator=g)
    check("gradient sums (EQLv2/EFL statistics): device == cpu",
          close(gg.gradient_sums(grad.to(device), labels.to(device)),
                gg.gradient_sums(grad, labels), 1e-4), failures)


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

    check_long_tail_losses(device, failures)

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
        ms, peak = peak_timed(fn, device)
        results[name] = ms
        print(f"{name:>12}: {ms:8.2f} ms forward+backward at {n_big}x{c}, peak {peak:.0f} MiB")
    if "torchvision" in results:
        print(f"speed-up vs torchvision: {results['torchvision'] / results['mmimb fused']:.2f}x")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
