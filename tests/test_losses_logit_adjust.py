"""Balanced softmax, post-hoc logit adjustment and ECM: formulas, contract, heads, checkpoints."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from mmdet.models.losses import CrossEntropyLoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config, ConfigDict
from mmengine.runner import Runner
from mmengine.runner.checkpoint import load_state_dict

import mmimb  # noqa: F401  (registers the losses)
from mmimb.losses import BalancedSoftmaxLoss, EffectiveClassMarginLoss, PostHocLogitAdjustedLoss
from mmimb.losses.functional_logit_adjust import (
    ecm_loss,
    ecm_scores,
    effective_class_margins,
    logit_adjusted_cross_entropy,
    logit_adjustment,
    posthoc_adjusted_softmax,
)
from tests.conftest import REPO, TINY
from tests.test_losses_modules import TINY_BACKBONE, TINY_NECK, tiny_batch, tiny_detector

N, C = 37, 5
COUNTS = [500, 60, 7, 0, 1]
LOSSES = (BalancedSoftmaxLoss, PostHocLogitAdjustedLoss, EffectiveClassMarginLoss)


def random_inputs(seed: int, n: int = N, columns: int = C + 1,
                  dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
    """Logits ``[n, columns]``, labels in ``[0, C]`` (``C`` = background), weights ``[n]``."""
    gen = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, columns, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, C + 1, (n,), generator=gen)
    weight = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    weight[:3] = 0
    return pred, labels, weight


def sized(loss: Any, num_classes: int = C) -> Any:
    """The loss as an RoI head leaves it: sized through ``get_cls_channels``."""
    loss.get_cls_channels(num_classes)
    return loss


# -- references written from the papers ----------------------------------------------------------


def slow_adjustment(counts: list[int], tau: float) -> list[float]:
    """``tau log(C n_c / sum n)`` per foreground class (zero counted as one), then 0."""
    n = [max(c, 1) for c in counts]
    return [tau * math.log(len(n) * c / sum(n)) for c in n] + [0.0]


def slow_ecm_terms(counts: list[int], ratio: float) -> tuple[list[float], list[float],
                                                              list[float]]:
    """The reference implementation's ``pos_w``, ``neg_w`` and ``detection_cls_weight``."""
    n = [float(max(c, 1)) for c in counts]
    n.append(sum(n) * ratio)
    pos, neg, weight = [], [], []
    for n_pos in n:
        n_neg = sum(n) - n_pos
        q_pos, q_neg = n_pos ** 0.25, n_neg ** 0.25
        pos.append(math.log(1 / (q_neg / (q_pos + q_neg))))
        neg.append(math.log(1 / (q_pos / (q_pos + q_neg))))
        a = n_neg / n_pos
        weight.append(a * math.log((1 + a) / a))
    return pos, neg, weight


def slow_ecm_loss(pred: torch.Tensor, labels: torch.Tensor, counts: list[int],
                  ratio: float) -> torch.Tensor:
    """The reference's forward, term by term: two exponentials per element."""
    pos, neg, weight = slow_ecm_terms(counts, ratio)
    total = pred.new_zeros(())
    for i in range(pred.shape[0]):
        for k in range(pred.shape[1]):
            e_pos = torch.exp(pred[i, k] + pos[k])
            e_neg = torch.exp(-pred[i, k] + neg[k])
            p = e_pos / (e_pos + e_neg) if labels[i] == k else e_neg / (e_pos + e_neg)
            total = total - weight[k] * torch.log(p)
    return total


# -- functional cores ----------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_adjustment_matches_formula_and_zero_counts_stay_finite(tau: float) -> None:
    ours = logit_adjustment(torch.tensor(COUNTS, dtype=torch.float64), tau)
    torch.testing.assert_close(ours, torch.tensor(slow_adjustment(COUNTS, tau),
                                                  dtype=torch.float64))
    assert torch.isfinite(ours).all() and ours[3] == ours[4]  # 0 counts as 1


def test_balanced_softmax_is_rens_formula_with_an_average_background() -> None:
    # Ren et al.: -log(n_y e^{x_y} / sum_k n_k e^{x_k}); background counted as sum(n) / C.
    pred, labels, _ = random_inputs(0)
    n = torch.tensor([max(c, 1) for c in COUNTS], dtype=torch.float64)
    n_all = torch.cat([n, n.sum()[None] / C])
    expected = -torch.log(n_all[labels] * pred.exp().gather(1, labels[:, None]).squeeze(1)
                          / (n_all * pred.exp()).sum(1))
    ours = logit_adjusted_cross_entropy(pred, labels, logit_adjustment(n, 1.0))
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("counts", [[50] * C, COUNTS])
def test_tau_zero_and_equal_counts_are_plain_cross_entropy(counts: list[int]) -> None:
    pred, labels, _ = random_inputs(1)
    tau = 0.0 if counts == COUNTS else 1.7
    adjustment = logit_adjustment(torch.tensor(counts, dtype=torch.float64), tau)
    x1 = pred.clone().requires_grad_()
    x2 = pred.clone().requires_grad_()
    ours = logit_adjusted_cross_entropy(x1, labels, adjustment)
    plain = F.cross_entropy(x2, labels, reduction="none")
    torch.testing.assert_close(ours, plain)
    ours.sum().backward()
    plain.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(posthoc_adjusted_softmax(pred, adjustment), pred.softmax(1))


def test_ecm_margins_and_weights_match_the_reference_terms() -> None:
    margin, weight = effective_class_margins(torch.tensor(COUNTS, dtype=torch.float64), 6.3313)
    pos, neg, ref_weight = slow_ecm_terms(COUNTS, 6.3313)
    torch.testing.assert_close(margin, torch.tensor(pos, dtype=torch.float64)
                               - torch.tensor(neg, dtype=torch.float64))
    torch.testing.assert_close(weight, torch.tensor(ref_weight, dtype=torch.float64))
    assert torch.isfinite(margin).all() and torch.isfinite(weight).all()


def test_ecm_loss_value_and_gradient_match_the_reference_forward() -> None:
    pred, labels, _ = random_inputs(2, n=9)
    margin, weight = effective_class_margins(torch.tensor(COUNTS, dtype=torch.float64), 3.0)
    x1 = pred.clone().requires_grad_()
    x2 = pred.clone().requires_grad_()
    ours = ecm_loss(x1, labels, margin, weight)
    assert ours.shape == (9, C + 1)
    reference = slow_ecm_loss(x2, labels, COUNTS, 3.0)
    torch.testing.assert_close(ours.sum(), reference)
    ours.sum().backward()
    reference.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_ecm_with_equal_counts_is_one_class_independent_sigmoid_loss() -> None:
    # Degenerate identity: every column (background included, bg_fg_ratio = 1/C) with the
    # same count n has N - n = C n negatives, so margin = (1/4) log(1/C) and weight
    # w = a log((1 + a)/a) with a = C, whatever n: the same binary loss for every class.
    pred, labels, _ = random_inputs(3)
    for n in (1.0, 40.0, 1e4):
        margin, weight = effective_class_margins(torch.full((C,), n, dtype=torch.float64),
                                                 bg_fg_ratio=1 / C)
        m, w = 0.25 * math.log(1 / C), C * math.log((1 + C) / C)
        torch.testing.assert_close(margin, torch.full((C + 1,), m, dtype=torch.float64))
        torch.testing.assert_close(weight, torch.full((C + 1,), w, dtype=torch.float64))
        expected = w * F.binary_cross_entropy_with_logits(
            2 * pred + m, F.one_hot(labels, C + 1).double(), reduction="none")
        torch.testing.assert_close(ecm_loss(pred, labels, margin, weight), expected)


def test_float64_gradcheck() -> None:
    pred, labels, _ = random_inputs(4, n=6)
    x = pred.clone().requires_grad_()
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    adjustment = logit_adjustment(counts, 0.8)
    margin, weight = effective_class_margins(counts)
    assert torch.autograd.gradcheck(
        lambda p: logit_adjusted_cross_entropy(p, labels, adjustment), (x,))
    assert torch.autograd.gradcheck(lambda p: posthoc_adjusted_softmax(p, adjustment), (x,))
    assert torch.autograd.gradcheck(lambda p: ecm_loss(p, labels, margin, weight), (x,))
    assert torch.autograd.gradcheck(ecm_scores, (x,))


def test_non_finite_logits_behave_as_documented() -> None:
    pred, labels, _ = random_inputs(5, n=4)
    labels[0] = 0
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    adjustment = logit_adjustment(counts)
    margin, weight = effective_class_margins(counts)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = pred.clone()
        x[0, 1] = bad
        softmax_loss = logit_adjusted_cross_entropy(x, labels, adjustment)
        assert torch.isfinite(softmax_loss[1:]).all()
        if bad == -float("inf"):  # the limit: class 1 has probability 0
            keep = [0, 2, 3, 4, 5]
            torch.testing.assert_close(softmax_loss[0], F.cross_entropy(
                (x + adjustment)[:1, keep], labels[:1])[()])
        else:
            assert torch.isnan(softmax_loss[0])
        element = ecm_loss(x, labels, margin, weight)  # NaN, or inf on the wrong side
        assert not torch.isfinite(element[0, 1]) and torch.isfinite(element[1:]).all()


def test_half_precision_logits_are_promoted() -> None:
    pred = (torch.randint(0, 2, (N, C + 1)) * 200 - 100).to(torch.float16).requires_grad_()
    _, labels, _ = random_inputs(6)
    counts = torch.tensor(COUNTS)
    for value in (logit_adjusted_cross_entropy(pred, labels, logit_adjustment(counts)),
                  ecm_loss(pred, labels, *effective_class_margins(counts))):
        assert value.dtype == torch.float32 and torch.isfinite(value).all()
        pred.grad = None
        value.sum().backward()
        assert pred.grad is not None and torch.isfinite(pred.grad).all()


# -- registered modules --------------------------------------------------------------------------


def make_losses() -> list[tuple[Any, tuple[int, ...]]]:
    """Each loss sized for ``C`` classes with counts, and its ``'none'`` output shape."""
    return [
        (sized(BalancedSoftmaxLoss(tau=0.7, class_counts=COUNTS)), (N,)),
        (sized(PostHocLogitAdjustedLoss(class_counts=COUNTS)), (N,)),
        (sized(EffectiveClassMarginLoss(class_counts=COUNTS)), (N, C + 1)),
    ]


def test_balanced_softmax_module_against_closed_form_gradient() -> None:
    pred, labels, weight = random_inputs(7)
    loss = sized(BalancedSoftmaxLoss(tau=0.7, class_counts=COUNTS, loss_weight=2.0))
    x = pred.clone().requires_grad_()
    value = loss(x, labels, weight, avg_factor=11.0)
    value.backward()
    a = torch.tensor(slow_adjustment(COUNTS, 0.7), dtype=torch.float64)
    p = (pred + a).softmax(1)
    expected = 2.0 * (weight * -p.gather(1, labels[:, None]).squeeze(1).log()).sum() / 11.0
    # d/dx_j of -log softmax(x + a)_y is softmax(x + a)_j - [j == y].
    expected_grad = 2.0 * weight[:, None] * (p - F.one_hot(labels, C + 1)) / 11.0
    # The module keeps its adjustment in float32.
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(x.grad, expected_grad, rtol=1e-5, atol=1e-8)


def test_posthoc_loss_trains_exactly_like_mmdet_cross_entropy() -> None:
    pred, labels, weight = random_inputs(8)
    ours = sized(PostHocLogitAdjustedLoss(tau=2.0, class_counts=COUNTS, loss_weight=1.5))
    theirs = CrossEntropyLoss(loss_weight=1.5)
    x1, x2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    a, b = ours(x1, labels, weight, avg_factor=9.0), theirs(x2, labels, weight, avg_factor=9.0)
    torch.testing.assert_close(a, b, check_dtype=False)
    a.backward()
    b.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_ecm_module_equals_the_reference_forward_divided_by_the_rois() -> None:
    pred, labels, _ = random_inputs(9, n=11)
    loss = sized(EffectiveClassMarginLoss(class_counts=COUNTS, bg_fg_ratio=6.3313))
    # The reference ignores sample weights and divides by the number of RoIs, which is what a
    # BBoxHead passes as avg_factor when every weight is 1.
    ours = loss(pred.float(), labels, torch.ones(11), avg_factor=11.0)
    reference = slow_ecm_loss(pred, labels, COUNTS, 6.3313) / 11
    torch.testing.assert_close(ours, reference.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", range(3))
def test_reduction_contract(index: int) -> None:
    loss, none_shape = make_losses()[index]
    pred, labels, weight = random_inputs(10)
    elementwise = loss(pred, labels, reduction_override="none")
    assert elementwise.shape == none_shape
    w = weight if elementwise.dim() == 1 else weight[:, None]
    torch.testing.assert_close(loss(pred, labels, weight, avg_factor=7.0),
                               weight_reduce_loss(elementwise, w, "mean", 7.0))
    torch.testing.assert_close(loss(pred, labels, weight, reduction_override="sum"),
                               (elementwise * w).sum())
    torch.testing.assert_close(loss(pred, labels, weight), (elementwise * w).mean())
    assert loss(pred, labels, torch.zeros_like(weight)).item() == 0
    with pytest.raises(ValueError, match="avg_factor"):
        loss(pred, labels, weight, avg_factor=7.0, reduction_override="sum")
    with pytest.raises(ValueError, match="reduction_override"):
        loss(pred, labels, reduction_override="avg")


@pytest.mark.parametrize("index", range(3))
def test_empty_inputs_stay_finite(index: int) -> None:
    loss, _ = make_losses()[index]
    pred = torch.zeros(0, C + 1, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    for kwargs in ({}, {"avg_factor": 1.0}, {"reduction_override": "sum"}):
        value = loss(pred, labels, torch.zeros(0), **kwargs)
        assert value.item() == 0
    value.backward()
    assert pred.grad is not None and pred.grad.shape == (0, C + 1)


@pytest.mark.parametrize("cfg", [
    dict(type="BalancedSoftmaxLoss"),
    dict(type="BalancedSoftmaxLoss", tau=0.5, class_counts=COUNTS, loss_weight=2.0),
    dict(type="PostHocLogitAdjustedLoss", tau=1.5),
    dict(type="EffectiveClassMarginLoss", use_sigmoid=True, bg_fg_ratio=3.0),
])
def test_build_from_config(cfg: dict[str, Any]) -> None:
    loss = MODELS.build(copy.deepcopy(cfg))
    assert type(loss).__name__ == cfg["type"]
    assert loss.counts_from_dataset == ("class_counts" not in cfg)
    assert loss.num_classes == (C if "class_counts" in cfg else None)
    # ECM's margins are defined on image counts; the others take the hook's kind.
    assert loss.counts_by == ("image" if cfg["type"] == "EffectiveClassMarginLoss" else None)
    for key in ("tau", "bg_fg_ratio", "loss_weight"):
        if key in cfg:
            assert getattr(loss, key) == cfg[key]


@pytest.mark.parametrize(("cls", "kwargs", "error", "match"), [
    (BalancedSoftmaxLoss, dict(tau=-0.1), ValueError, "tau must be >= 0, got -0.1"),
    (BalancedSoftmaxLoss, dict(tau="1"), TypeError, "tau"),
    (BalancedSoftmaxLoss, dict(tau=float("nan")), TypeError, "tau"),
    (BalancedSoftmaxLoss, dict(use_sigmoid=True), ValueError, "use_sigmoid must be False"),
    (BalancedSoftmaxLoss, dict(class_counts=None), ValueError, "needs class counts"),
    (BalancedSoftmaxLoss, dict(class_counts="all"), ValueError, "class_counts"),
    (BalancedSoftmaxLoss, dict(class_counts=[3, -1]), ValueError, r"classes \[1\] have"),
    (BalancedSoftmaxLoss, dict(class_counts=[3, 1.5]), ValueError, "whole numbers"),
    (BalancedSoftmaxLoss, dict(num_classes=4, class_counts=COUNTS), ValueError,
     "class_counts has 5 entries but num_classes gives 4"),
    (BalancedSoftmaxLoss, dict(reduction="avg"), ValueError, "reduction"),
    (PostHocLogitAdjustedLoss, dict(tau=-1), ValueError, "tau"),
    (PostHocLogitAdjustedLoss, dict(num_classes=0), ValueError, "num_classes must be >= 1"),
    (PostHocLogitAdjustedLoss, dict(loss_weight="1"), TypeError, "loss_weight"),
    (EffectiveClassMarginLoss, dict(use_sigmoid=False), ValueError, "use_sigmoid must be True"),
    (EffectiveClassMarginLoss, dict(bg_fg_ratio=0.0), ValueError, "bg_fg_ratio must be > 0"),
    (EffectiveClassMarginLoss, dict(bg_fg_ratio=None), TypeError, "bg_fg_ratio"),
    (EffectiveClassMarginLoss, dict(class_counts=None), ValueError, "needs class counts"),
    (EffectiveClassMarginLoss, dict(num_classes=2.0), TypeError, "num_classes"),
])
def test_invalid_arguments_raise_naming_them(cls: type, kwargs: dict[str, Any],
                                             error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("cls", LOSSES)
def test_counts_and_columns_of_the_wrong_size_raise(cls: type) -> None:
    loss = sized(cls())
    with pytest.raises(ValueError, match=r"class_counts has 4 entries .*num_classes=5.*head "
                                         r"num_classes: 5.*loss num_classes: None"):
        loss.set_class_counts([1, 2, 3, 4])
    loss.set_class_counts(COUNTS)
    pred, labels, _ = random_inputs(11, columns=C + 2)
    with pytest.raises(ValueError, match=r"pred has 7 columns.*expected \(6,\)"):
        loss(pred, labels)
    pred, labels, _ = random_inputs(11)
    with pytest.raises(ValueError, match=r"labels in \[0, 6\)"):
        loss(pred, labels.clamp(max=C) + 1)


@pytest.mark.parametrize("cls", (BalancedSoftmaxLoss, EffectiveClassMarginLoss))
def test_auto_counts_missing_at_the_first_forward_raise(cls: type) -> None:
    loss = sized(cls())
    pred, labels, _ = random_inputs(12)
    with pytest.raises(ValueError, match=r"num_classes=5\) has no class counts.*ClassStatsHook"):
        loss(pred, labels)


def test_posthoc_needs_counts_only_to_score() -> None:
    loss = sized(PostHocLogitAdjustedLoss())
    pred, labels, _ = random_inputs(13)
    torch.testing.assert_close(loss(pred, labels), F.cross_entropy(pred, labels),
                               check_dtype=False)
    with pytest.raises(ValueError, match="has no class counts"):
        loss.get_activation(pred)


@pytest.mark.parametrize("cls", LOSSES)
def test_outside_an_roi_head_the_loss_refuses_to_run(cls: type) -> None:
    loss = cls(class_counts=COUNTS)  # never sized by a head
    pred, labels, _ = random_inputs(14)
    for call in (lambda: loss(pred, labels), lambda: loss.get_activation(pred)):
        with pytest.raises(ValueError, match="only as the loss_cls of an RoI head.*RetinaHead"):
            call()


@pytest.mark.parametrize("loss_cls", [
    dict(type="BalancedSoftmaxLoss", class_counts=COUNTS),
    dict(type="PostHocLogitAdjustedLoss", class_counts=COUNTS),
    dict(type="EffectiveClassMarginLoss", use_sigmoid=True, class_counts=COUNTS),
])
def test_in_retinanet_the_roi_loss_raises_a_clear_error(loss_cls: dict[str, Any]) -> None:
    torch.manual_seed(0)
    register_all_modules()
    cfg = Config.fromstring("_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'", ".py").model
    cfg.backbone, cfg.neck = TINY_BACKBONE, TINY_NECK
    cfg.bbox_head.update(num_classes=C, in_channels=16, feat_channels=16, stacked_convs=1,
                         anchor_generator=dict(octave_base_scale=2, strides=[8, 16, 32]))
    cfg.bbox_head.loss_cls = loss_cls  # replaced, not merged into the FocalLoss settings
    model = MODELS.build(cfg)
    model.train()
    data = model.data_preprocessor(tiny_batch(0), True)
    with pytest.raises(ValueError, match="only as the loss_cls of an RoI head.*RetinaHead"):
        model(**data, mode="loss")
    model.eval()
    with torch.no_grad(), pytest.raises(ValueError, match="only as the loss_cls of an RoI"):
        model(**model.data_preprocessor(tiny_batch(1), False), mode="predict")


# -- mmdet's head protocol: a real Shared2FCBBoxHead ---------------------------------------------

IMG_META = dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1.0, 1.0))


def roi_head(loss_cls: dict[str, Any], num_classes: int = C) -> Any:
    """mmdet's ``Shared2FCBBoxHead`` on ``[R, 4, 7, 7]`` RoI features."""
    register_all_modules(init_default_scope=False)
    return MODELS.build(dict(type="Shared2FCBBoxHead", in_channels=4, fc_out_channels=16,
                             roi_feat_size=7, num_classes=num_classes,
                             loss_cls=copy.deepcopy(loss_cls)))


def roi_batch(seed: int, num_classes: int = C, n: int = N) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 40
    wh = torch.rand(n, 2, generator=gen) * 20 + 4
    return dict(
        feats=torch.randn(n, 4, 7, 7, generator=gen),
        rois=torch.cat([torch.zeros(n, 1), xy, xy + wh], dim=1),
        labels=torch.randint(0, num_classes + 1, (n,), generator=gen),
        bbox_targets=torch.randn(n, 4, generator=gen) * 0.1)


def train_step_then_scores(head: Any, seed: int = 0) -> tuple[dict[str, torch.Tensor],
                                                              torch.Tensor, torch.Tensor]:
    """One SGD step of ``head.loss`` on a random RoI batch, then the logits and the scores
    that ``predict_by_feat`` returns for another batch (raw, before NMS)."""
    batch = roi_batch(seed, head.num_classes)
    head.train()
    cls_score, bbox_pred = head(batch["feats"])
    n = len(batch["labels"])
    torch.manual_seed(seed)  # the federated loss samples classes
    losses = head.loss(cls_score, bbox_pred, batch["rois"], batch["labels"], torch.ones(n),
                       batch["bbox_targets"], torch.ones(n, 4))
    torch.manual_seed(seed)
    direct = head.loss_cls(cls_score, batch["labels"], torch.ones(n), avg_factor=float(n))
    torch.testing.assert_close(losses["loss_cls"], direct)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    assert head.fc_cls.weight.grad is not None and head.fc_cls.weight.grad.abs().sum() > 0
    optimizer.step()
    head.eval()
    test = roi_batch(seed + 1, head.num_classes)
    with torch.no_grad():
        logits, deltas = head(test["feats"])
        results = head.predict_by_feat((test["rois"],), (logits,), (deltas,), [IMG_META],
                                       rcnn_test_cfg=None)
        nms = head.predict_by_feat(
            (test["rois"],), (logits,), (deltas,), [IMG_META],
            rcnn_test_cfg=ConfigDict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5),
                                     max_per_img=50))
    kept = nms[0]
    assert ((kept.scores >= 0) & (kept.scores <= 1)).all()
    assert kept.labels.numel() > 0 and (kept.labels < head.num_classes).all()
    return losses, logits, results[0].scores


@pytest.mark.parametrize(("loss_cls", "channels", "scores_by_hand"), [
    (dict(type="BalancedSoftmaxLoss", tau=1.0), C + 1, lambda x: x.softmax(1)),
    (dict(type="PostHocLogitAdjustedLoss", tau=1.0), C + 1,
     lambda x: (x - torch.tensor(slow_adjustment(COUNTS, 1.0))).softmax(1)),
    (dict(type="EffectiveClassMarginLoss", use_sigmoid=True), C + 1,
     lambda x: torch.cat([x[:, :C].sigmoid() * (1 - x[:, C:].sigmoid()), x[:, C:].sigmoid()],
                         1)),
], ids=["balanced-softmax", "post-hoc", "ecm"])
def test_bbox_head_trains_and_predicts_with_the_loss_activation(
        loss_cls: dict[str, Any], channels: int, scores_by_hand: Any) -> None:
    torch.manual_seed(0)
    head = roi_head(loss_cls)  # no num_classes in the loss: it comes from the head
    assert head.loss_cls.num_classes == C and head.fc_cls.out_features == channels
    head.loss_cls.set_class_counts(COUNTS)
    losses, logits, scores = train_step_then_scores(head)
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    if loss_cls["type"] == "EffectiveClassMarginLoss":
        assert set(losses) >= {"acc_objectness", "acc_classes"}
    else:
        assert "acc" in losses
    assert scores.shape == (N, C + 1) and ((scores >= 0) & (scores <= 1)).all()
    torch.testing.assert_close(scores, scores_by_hand(logits))


def test_head_loss_and_dataset_disagreeing_name_all_three_numbers() -> None:
    with pytest.raises(ValueError, match=r"head has num_classes=5 but the loss has "
                                         r"num_classes=4.*head num_classes: 5; loss num_classes:"
                                         r" 4; training set / class_counts: not counted yet"):
        roi_head(dict(type="BalancedSoftmaxLoss", num_classes=4))
    head = roi_head(dict(type="EffectiveClassMarginLoss", use_sigmoid=True))
    with pytest.raises(ValueError, match=r"class_counts has 3 entries .*num_classes=5 \(head "
                                         r"num_classes: 5; loss num_classes: None; training "
                                         r"set / class_counts: 3 classes\)"):
        head.loss_cls.set_class_counts([4, 5, 6])


# -- post hoc: a cross-entropy checkpoint, evaluated with the adjustment --------------------------


def test_posthoc_head_loads_a_cross_entropy_state_dict_and_adjusts_its_scores() -> None:
    torch.manual_seed(0)
    plain = roi_head(dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    train_step_then_scores(plain)
    state = plain.state_dict()
    assert not any("class_counts" in key for key in state)
    tau = 1.5
    adjusted = roi_head(dict(type="PostHocLogitAdjustedLoss", tau=tau))
    adjusted.load_state_dict(state)  # strict: the missing counts are not an error
    load_state_dict(adjusted, state, strict=True)  # mmengine's loader, as load_checkpoint
    adjusted.loss_cls.set_class_counts(COUNTS)  # as ClassStatsHook.before_test does
    adjusted.eval()
    plain.eval()
    batch = roi_batch(5)
    with torch.no_grad():
        logits, deltas = plain(batch["feats"])
        args = ((batch["rois"],), (logits,), (deltas,), [IMG_META])
        before = plain.predict_by_feat(*args, rcnn_test_cfg=None)[0].scores
        after = adjusted.predict_by_feat(*args, rcnn_test_cfg=None)[0].scores
    torch.testing.assert_close(adjusted(batch["feats"])[0], logits)  # same weights
    torch.testing.assert_close(before, logits.softmax(1))
    by_hand = []
    n = [max(c, 1) for c in COUNTS]
    for row in logits.tolist():
        z = [x - tau * math.log(C * n_c / sum(n)) for x, n_c in zip(row, n, strict=False)]
        z.append(row[-1])  # the background logit is not adjusted
        total = sum(math.exp(v) for v in z)
        by_hand.append([math.exp(v) / total for v in z])
    torch.testing.assert_close(after, torch.tensor(by_hand), rtol=1e-5, atol=1e-6)
    # The adjustment moves probability from the most frequent class to the rarest.
    assert (after[:, 0] < before[:, 0]).all() and (after[:, 4] > before[:, 4]).all()


def test_counts_round_trip_through_state_dict_into_a_head() -> None:
    trained = roi_head(dict(type="BalancedSoftmaxLoss"))
    trained.loss_cls.set_class_counts(COUNTS)
    state = trained.state_dict()
    assert state["loss_cls.class_counts"].tolist() == COUNTS
    assert not any(k.startswith("loss_cls.adjustment") for k in state)  # derived, not saved
    resumed = roi_head(dict(type="BalancedSoftmaxLoss"))
    assert resumed.loss_cls.get_class_counts() is None
    resumed.load_state_dict(state)
    assert resumed.loss_cls.get_class_counts().tolist() == COUNTS
    torch.testing.assert_close(resumed.loss_cls.current_adjustment(),
                               torch.tensor(slow_adjustment(COUNTS, 1.0)))


# -- through mmengine's Runner and tools/test.py ---------------------------------------------------


def tiny_config(tmp_path: Path, data_root: Path, config: str, name: str) -> Path:
    """``config`` pointed at the tiny synthetic dataset, for 2 iterations, no validation."""
    text = f"""
_base_ = '{REPO / 'configs' / 'faster_rcnn' / config}'
data_root = '{data_root}/'
synthetic = {asdict(TINY)!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs'),
]
model = dict(roi_head=dict(bbox_head=dict(num_classes={TINY.num_classes})))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, synthetic=synthetic, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, synthetic=synthetic))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json',
                     train_ann_file=data_root + 'annotations/train.json',
                     rare_max=5, common_max=20)
test_evaluator = val_evaluator
train_cfg = dict(max_iters=2, val_interval=100)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))
"""
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_posthoc_config_evaluates_a_cross_entropy_checkpoint_with_tools_test(
        tmp_path: Path, tiny_root: Path) -> None:
    register_all_modules(init_default_scope=True)
    baseline = Config.fromfile(tiny_config(tmp_path, tiny_root,
                                           "faster-rcnn_r18tiny_fpn_1k_ltsynth.py", "baseline"))
    baseline.work_dir = str(tmp_path / "baseline")
    Runner.from_cfg(baseline).train()
    ckpt = tmp_path / "baseline" / "iter_2.pth"
    state = torch.load(ckpt, map_location="cpu")["state_dict"]
    assert not any("class_counts" in key for key in state)

    cfg = tiny_config(tmp_path, tiny_root,
                      "posthoclogitadjust_faster-rcnn_r18tiny_fpn_1k_ltsynth.py", "posthoc")
    proc = subprocess.run([sys.executable, "tools/test.py", str(cfg), str(ckpt), "--work-dir",
                           str(tmp_path / "test")], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "PostHocLogitAdjustedLoss has no class counts from the checkpoint" in log
    assert "missing keys" not in log and "lt/mAP" in log


@pytest.mark.parametrize("loss_cls", [
    dict(type="BalancedSoftmaxLoss"),
    dict(type="PostHocLogitAdjustedLoss"),
    dict(type="EffectiveClassMarginLoss", use_sigmoid=True),
], ids=lambda cfg: cfg["type"])
def test_faster_rcnn_trains_one_step_and_predicts(loss_cls: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = tiny_detector("faster-rcnn_r50_fpn", loss_cls)
    head = model.roi_head.bbox_head
    assert type(head.loss_cls).__name__ == loss_cls["type"] and head.loss_cls.num_classes == C
    head.loss_cls.set_class_counts(COUNTS)  # as ClassStatsHook.before_train does
    model.train()
    loss, log_vars = model.parse_losses(model(**model.data_preprocessor(tiny_batch(0), True),
                                              mode="loss"))
    assert torch.isfinite(loss) and log_vars["loss_cls"] > 0
    loss.backward()
    assert head.fc_cls.weight.grad is not None and head.fc_cls.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(tiny_batch(1), False), mode="predict")
    for result in results:
        scores, labels = result.pred_instances.scores, result.pred_instances.labels
        assert ((scores >= 0) & (scores <= 1)).all() and (labels < C).all()
