"""Functional cores of mmimb's losses against torchvision, mmdet and slow references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
from torch.autograd import gradcheck
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from mmimb.losses import functional
from mmimb.losses.functional import (
    compile_enabled,
    one_hot_targets,
    sigmoid_focal_loss,
    sigmoid_focal_loss_sum,
    softmax_focal_loss,
)

N, C = 37, 6


def random_inputs(seed: int, n: int = N, c: int = C, dtype: torch.dtype = torch.float64,
                  scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[n, c]`` and labels in ``[0, c]`` (``c`` = background), seeded."""
    gen = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, c + 1, (n,), generator=gen)
    return pred, labels


def slow_sigmoid_focal(pred: torch.Tensor, labels: torch.Tensor, alpha: list[float],
                       gamma: float, class_weight: list[float]) -> torch.Tensor:
    """The textbook formula, one element at a time, in Python floats."""
    out = torch.zeros(pred.shape, dtype=torch.float64)
    for n in range(pred.shape[0]):
        for c in range(pred.shape[1]):
            p = 1 / (1 + math.exp(-float(pred[n, c])))
            t = int(labels[n]) == c
            p_t = p if t else 1 - p
            a_t = alpha[c] if t else 1 - alpha[c]
            out[n, c] = -class_weight[c] * a_t * (1 - p_t) ** gamma * math.log(p_t)
    return out


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [0.25, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_focal_equals_torchvision(gamma: float, alpha: float,
                                          dtype: torch.dtype) -> None:
    pred, labels = random_inputs(0, dtype=dtype)
    target = one_hot_targets(labels, C, dtype)
    expected = tv_sigmoid_focal_loss(pred, target, alpha=alpha, gamma=gamma)
    torch.testing.assert_close(sigmoid_focal_loss(pred, labels, alpha, gamma), expected,
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sigmoid_focal_loss(pred, target, alpha, gamma), expected,
                               atol=1e-6, rtol=1e-6)
    weight = torch.rand(N, dtype=dtype)
    fused = sigmoid_focal_loss_sum(pred, labels, alpha, gamma, weight=weight, use_compile=False)
    torch.testing.assert_close(fused, (expected * weight[:, None]).sum(), atol=1e-5, rtol=1e-6)


def test_sigmoid_focal_equals_mmdet_soft_targets() -> None:
    pred, _ = random_inputs(1)
    soft = torch.rand(N, C, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = py_sigmoid_focal_loss(pred, soft, gamma=1.5, alpha=0.4, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(pred, soft, 0.4, 1.5), expected)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_per_class_alpha_and_weight_against_slow_loop(gamma: float) -> None:
    pred, labels = random_inputs(2, n=9, c=4)
    alpha, class_weight = [0.1, 0.5, 0.9, 1.0], [0.5, 2.0, 0.0, 1.5]
    expected = slow_sigmoid_focal(pred, labels, alpha, gamma, class_weight)
    alpha_t, weight_t = torch.tensor(alpha), torch.tensor(class_weight)
    torch.testing.assert_close(sigmoid_focal_loss(pred, labels, alpha_t, gamma, weight_t),
                               expected)
    fused = sigmoid_focal_loss_sum(pred, labels, alpha_t, gamma, weight_t, use_compile=False)
    torch.testing.assert_close(fused, expected.sum())


@pytest.mark.parametrize("weight_shape", [None, (N,), (N, C)])
def test_fused_sum_matches_elementwise_in_value_and_gradient(
        weight_shape: tuple[int, ...] | None) -> None:
    pred, labels = random_inputs(3)
    gen = torch.Generator().manual_seed(4)
    weight = None if weight_shape is None else torch.rand(weight_shape, dtype=torch.float64,
                                                          generator=gen)
    alpha = torch.rand(C, dtype=torch.float64, generator=gen)
    class_weight = torch.rand(C, dtype=torch.float64, generator=gen) * 2
    x1, x2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    fused = sigmoid_focal_loss_sum(x1, labels, alpha, 2.0, class_weight, weight,
                                   use_compile=False)
    elementwise = sigmoid_focal_loss(x2, labels, alpha, 2.0, class_weight)
    if weight is not None:
        elementwise = elementwise * (weight if weight.dim() == 2 else weight[:, None])
    reference = elementwise.sum()
    (fused * 3).backward()
    (reference * 3).backward()
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(x1.grad, x2.grad)


def test_sigmoid_gamma0_is_bce_in_value_and_gradient() -> None:
    pred, labels = random_inputs(6)
    target = one_hot_targets(labels, C, torch.float64)
    class_weight = torch.rand(C, dtype=torch.float64) + 0.5
    x1, x2, x3 = (pred.clone().requires_grad_() for _ in range(3))
    loss = sigmoid_focal_loss(x1, labels, None, 0.0, class_weight)
    fused = sigmoid_focal_loss_sum(x2, labels, None, 0.0, class_weight, use_compile=False)
    # Both terms weighted per class, which is BCE's per-element weight (not its pos_weight).
    bce = F.binary_cross_entropy_with_logits(x3, target, weight=class_weight.expand(N, C),
                                             reduction="none")
    torch.testing.assert_close(loss, bce)
    torch.testing.assert_close(fused, bce.sum())
    grads = [torch.autograd.grad(v.sum(), x)[0] for v, x in ((loss, x1), (fused, x2), (bce, x3))]
    torch.testing.assert_close(grads[0], grads[2])
    torch.testing.assert_close(grads[1], grads[2])


def test_softmax_gamma0_is_cross_entropy_in_value_and_gradient() -> None:
    pred, labels = random_inputs(7, c=C + 1)
    labels = labels.clamp(max=C)
    class_weight = torch.rand(C + 1, dtype=torch.float64) + 0.5
    x1, x2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    loss = softmax_focal_loss(x1, labels, 0.0, class_weight)
    ce = F.cross_entropy(x2, labels, weight=class_weight, reduction="none")
    torch.testing.assert_close(loss, ce)
    loss.sum().backward()
    ce.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_softmax_focal_against_formula() -> None:
    pred, labels = random_inputs(8, c=C + 1)
    labels = labels.clamp(max=C)
    class_weight = torch.rand(C + 1, dtype=torch.float64)
    p_t = pred.softmax(1)[torch.arange(N), labels]
    expected = -class_weight[labels] * (1 - p_t) ** 2.5 * p_t.log()
    torch.testing.assert_close(softmax_focal_loss(pred, labels, 2.5, class_weight), expected)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_gradcheck_float64(gamma: float) -> None:
    pred, labels = random_inputs(9, n=7, c=3, scale=2.0)
    labels[0] = 3  # one background row for sure
    alpha = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    class_weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    weight = torch.rand(7, dtype=torch.float64)
    x = pred.clone().requires_grad_()
    assert gradcheck(lambda p: sigmoid_focal_loss(p, labels, alpha, gamma, class_weight), (x,))
    assert gradcheck(lambda p: sigmoid_focal_loss_sum(p, labels, alpha, gamma, class_weight,
                                                      weight, use_compile=False), (x,))
    softmax_x = torch.cat([pred, pred[:, :1] - 1], 1).requires_grad_()
    softmax_weight = torch.tensor([0.5, 1.0, 2.0, 1.0], dtype=torch.float64)
    assert gradcheck(lambda p: softmax_focal_loss(p, labels, gamma, softmax_weight),
                     (softmax_x,))


def test_empty_inputs_stay_finite() -> None:
    pred = torch.zeros(0, C, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    assert sigmoid_focal_loss(pred, labels).shape == (0, C)
    total = sigmoid_focal_loss_sum(pred, labels, weight=torch.zeros(0))
    total.backward()
    assert total.item() == 0 and pred.grad is not None and pred.grad.shape == (0, C)
    assert softmax_focal_loss(pred, labels).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_of_100_are_finite(dtype: torch.dtype) -> None:
    pred = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 3.0]], dtype=dtype)
    labels = torch.tensor([1, 3])  # wrong side at +-100 for row 0, background for row 1
    reference = sigmoid_focal_loss(pred.double(), labels, 0.25, 2.0).float()
    x1, x2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    loss = sigmoid_focal_loss(x1, labels, 0.25, 2.0)
    fused = sigmoid_focal_loss_sum(x2, labels, 0.25, 2.0, use_compile=False)
    assert loss.dtype == torch.float32 and fused.dtype == torch.float32
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(fused, reference.sum())
    x3 = torch.cat([pred, pred[:, :1]], 1).requires_grad_()
    soft = softmax_focal_loss(x3, labels)
    (loss.sum() + fused + soft.sum()).backward()
    for x in (x1, x2, x3):
        assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert torch.isfinite(soft).all()


def test_non_finite_logits_follow_the_documented_behaviour() -> None:
    pred = torch.tensor([[float("nan"), 0.0], [float("inf"), float("-inf")]])
    labels = torch.tensor([2, 0])  # row 1: +inf on its target, -inf on a negative: right sides
    loss = sigmoid_focal_loss(pred, labels)
    assert torch.isnan(loss[0, 0]) and loss[0, 1] > 0
    assert torch.isnan(loss[1]).all()
    assert torch.isnan(softmax_focal_loss(pred, torch.tensor([1, 0]))).all()
    assert torch.isnan(sigmoid_focal_loss_sum(pred, labels, use_compile=False))
    assert sigmoid_focal_loss_sum(pred[1:], labels[1:], use_compile=False).item() == 0
    wrong_side = sigmoid_focal_loss_sum(torch.tensor([[float("-inf")]]), torch.tensor([0]),
                                        use_compile=False)
    assert wrong_side.item() == float("inf")


@pytest.mark.parametrize(("call", "match"), [
    (lambda p, y: sigmoid_focal_loss(p, y, gamma=-1.0), "gamma"),
    (lambda p, y: sigmoid_focal_loss(p, y, alpha=torch.ones(C + 1)), "alpha"),
    (lambda p, y: sigmoid_focal_loss(p, y, class_weight=torch.ones(2)), "class_weight"),
    (lambda p, y: sigmoid_focal_loss(p, y.float()), "target"),
    (lambda p, y: sigmoid_focal_loss(p, torch.zeros(N, C + 1)), "target"),
    (lambda p, y: sigmoid_focal_loss(p[0], y), "pred"),
    (lambda p, y: sigmoid_focal_loss_sum(p, y[:3]), "labels"),
    (lambda p, y: sigmoid_focal_loss_sum(p, y > 0), "labels"),
    (lambda p, y: sigmoid_focal_loss_sum(p, y, weight=torch.ones(N + 1)), "weight"),
    (lambda p, y: sigmoid_focal_loss_sum(p, y, gamma=float("nan")), "gamma"),
    (lambda p, y: softmax_focal_loss(p, y, class_weight=torch.ones(C + 2)), "class_weight"),
    (lambda p, y: softmax_focal_loss(p.long(), y), "pred"),
])
def test_invalid_arguments_raise_naming_them(call: object, match: str) -> None:
    pred, labels = random_inputs(10)
    with pytest.raises(ValueError, match=match):
        call(pred, labels)  # type: ignore[operator]


def test_compile_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(functional.DISABLE_COMPILE_ENV, raising=False)
    assert compile_enabled() and compile_enabled(True) and not compile_enabled(False)
    monkeypatch.setenv(functional.DISABLE_COMPILE_ENV, "1")
    assert not compile_enabled() and not compile_enabled(True)


def test_compiled_path_matches_eager_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiles once, on a small float32 problem (a few seconds; cached by inductor on disk)."""
    monkeypatch.delenv(functional.DISABLE_COMPILE_ENV, raising=False)
    monkeypatch.setattr(functional, "_compiled_kernel", None)
    monkeypatch.setattr(functional, "_compile_failed", False)
    pred, labels = random_inputs(11, n=300, c=5, dtype=torch.float32)
    alpha, class_weight = torch.rand(5), torch.rand(5) + 0.5
    weight = torch.rand(300)
    results = []
    for use_compile in (True, False):
        x = pred.clone().requires_grad_()
        total = sigmoid_focal_loss_sum(x, labels, alpha, 2.0, class_weight, weight,
                                       use_compile=use_compile)
        total.backward()
        results.append((total, x.grad))
    assert functional._compiled_kernel is not None and not functional._compile_failed
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-7)


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no C++ compiler")

    monkeypatch.delenv(functional.DISABLE_COMPILE_ENV, raising=False)
    monkeypatch.setattr(functional, "_compiled_kernel", broken)
    monkeypatch.setattr(functional, "_compile_failed", False)
    pred, labels = random_inputs(12)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        total = sigmoid_focal_loss_sum(pred, labels)
    torch.testing.assert_close(total, sigmoid_focal_loss(pred, labels).sum())
    assert not compile_enabled()
