"""Federated loss: class sampling (statistics), the loss against detectron2's formula, heads."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.runner import Runner

import mmimb  # noqa: F401  (registers the losses)
from mmimb.losses import FederatedLoss
from mmimb.losses.functional_federated import (
    federated_class_weights,
    federated_loss,
    sample_federated_classes,
)
from mmimb.stats import class_stats_from_coco
from tests.test_losses_logit_adjust import roi_head, tiny_config, train_step_then_scores
from tests.test_losses_modules import tiny_batch, tiny_detector

N, C = 37, 5
COUNTS = [500, 60, 7, 0, 1]


def random_inputs(seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits ``[n, C]`` (float64), labels in ``[0, C]`` (``C`` = background), weights."""
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, C, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, C + 1, (n,), generator=gen)
    weight = torch.rand(n, generator=gen, dtype=torch.float64)
    weight[:3] = 0
    return pred, labels, weight


def sized(loss: FederatedLoss) -> FederatedLoss:
    loss.get_cls_channels(C)
    return loss


# -- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_sample_classes", [1, 2, 3, 5, 50])
def test_present_classes_always_trained_and_the_total_is_exact(num_sample_classes: int) -> None:
    weights = federated_class_weights(torch.tensor(COUNTS))
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        labels = torch.randint(0, C + 1, (int(torch.randint(0, 6, (1,), generator=gen)),),
                               generator=gen)
        chosen = sample_federated_classes(labels, weights, num_sample_classes, generator=gen)
        present = set(labels[labels < C].tolist())
        assert present <= set(chosen.nonzero().flatten().tolist())
        # Without replacement: a draw that repeated a class would train fewer classes.
        assert int(chosen.sum()) == max(len(present), min(num_sample_classes, C))


def successive_inclusion(weights: list[float], draws: int) -> np.ndarray:
    """Exact inclusion probabilities of drawing ``draws`` items without replacement with
    probability proportional to ``weights`` at each step, by enumerating ordered draws."""
    result = np.zeros(len(weights))
    for order in itertools.permutations(range(len(weights)), draws):
        p, left = 1.0, sum(weights)
        for i in order:
            p *= weights[i] / left
            left -= weights[i]
        result[list(order)] += p
    return result


DRAWS = 10000


def empirical_frequencies(counts: list[int], present: list[int], num_sample_classes: int,
                          power: float) -> np.ndarray:
    weights = federated_class_weights(torch.tensor(counts), power)
    gen = torch.Generator().manual_seed(1234)
    labels = torch.tensor(present)
    hits = torch.zeros(len(counts))
    for _ in range(DRAWS):
        hits += sample_federated_classes(labels, weights, num_sample_classes, generator=gen)
    return (hits / DRAWS).numpy()


@pytest.mark.parametrize("power", [0.5, 0.0])
def test_one_negative_is_drawn_with_probability_proportional_to_count_power(
        power: float) -> None:
    counts = [1000, 400, 100, 25, 9, 4, 1, 0]
    frequencies = empirical_frequencies(counts, [0, 0, 8], 2, power)
    assert frequencies[0] == 1.0
    weights = np.array([max(n, 1) ** power for n in counts[1:]])
    expected = weights / weights.sum()  # proportional to count ** power (a zero counts as 1)
    tolerance = 5 * np.sqrt(expected * (1 - expected) / DRAWS)
    np.testing.assert_array_less(np.abs(frequencies[1:] - expected), tolerance)


def test_several_negatives_follow_successive_sampling_without_replacement() -> None:
    counts = [900, 400, 100, 25, 4, 0]
    frequencies = empirical_frequencies(counts, [2], 4, 0.5)
    assert frequencies[2] == 1.0
    others = [0, 1, 3, 4, 5]
    expected = successive_inclusion([max(counts[i], 1) ** 0.5 for i in others], 3)
    tolerance = 5 * np.sqrt(expected * (1 - expected) / DRAWS)
    np.testing.assert_array_less(np.abs(frequencies[others] - expected), tolerance)
    # Three draws: each class is included at most once, so the frequencies sum to 3.
    assert math.isclose(frequencies[others].sum(), 3.0)


def test_class_weights_are_count_power_with_zero_counted_as_one() -> None:
    torch.testing.assert_close(federated_class_weights(torch.tensor(COUNTS), 0.5),
                               torch.tensor([500 ** 0.5, 60 ** 0.5, 7 ** 0.5, 1.0, 1.0]))
    torch.testing.assert_close(federated_class_weights(torch.tensor(COUNTS), 0.0),
                               torch.ones(C))


# -- the loss ------------------------------------------------------------------------------------


def detectron2_reference(pred: torch.Tensor, labels: torch.Tensor,
                         chosen: torch.Tensor) -> torch.Tensor:
    """``sigmoid_cross_entropy_loss`` of detectron2 with ``use_fed_loss``, element by element:
    the BCE of every RoI on every chosen class, summed, divided by the number of RoIs."""
    total = pred.new_zeros(())
    for n in range(pred.shape[0]):
        for c in chosen.nonzero().flatten().tolist():
            p = torch.sigmoid(pred[n, c])
            total = total - (torch.log(p) if labels[n] == c else torch.log(1 - p))
    return total / pred.shape[0]


def test_loss_value_and_gradient_match_detectron2() -> None:
    pred, labels, _ = random_inputs(0, n=12)
    loss = sized(FederatedLoss(class_counts=COUNTS, num_sample_classes=3))
    x1, x2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    torch.manual_seed(3)
    ours = loss(x1, labels, torch.ones(12), avg_factor=12.0)  # as a BBoxHead calls it
    torch.manual_seed(3)
    chosen = loss.sample_classes(labels)
    assert int(chosen.sum()) == max(3, len(set(labels[labels < C].tolist())))
    reference = detectron2_reference(x2, labels, chosen)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    assert (x1.grad[:, ~chosen] == 0).all()  # unsampled classes get no gradient


def test_with_every_class_sampled_it_is_the_sigmoid_cross_entropy() -> None:
    pred, labels, weight = random_inputs(1)
    loss = sized(FederatedLoss(class_counts=COUNTS, num_sample_classes=C))
    x1, x2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ours = loss(x1, labels, weight, avg_factor=9.0)
    target = F.one_hot(labels, C + 1)[:, :C].double()
    plain = (F.binary_cross_entropy_with_logits(x2, target, reduction="none")
             * weight[:, None]).sum() / 9.0
    torch.testing.assert_close(ours, plain)
    ours.backward()
    plain.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_float64_gradcheck() -> None:
    pred, labels, _ = random_inputs(2, n=6)
    chosen = torch.tensor([True, False, True, True, False])
    x = pred.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda p: federated_loss(p, labels, chosen), (x,))


def seeded(loss: FederatedLoss, *args: Any, **kwargs: Any) -> torch.Tensor:
    """One call with the global generator reseeded, so every call samples the same classes."""
    torch.manual_seed(7)
    return loss(*args, **kwargs)


def test_reduction_contract() -> None:
    loss = sized(FederatedLoss(class_counts=COUNTS, num_sample_classes=2))
    pred, labels, weight = random_inputs(3)
    elementwise = seeded(loss, pred, labels, reduction_override="none")
    assert elementwise.shape == (N, C)
    w = weight[:, None]
    torch.testing.assert_close(seeded(loss, pred, labels, weight, avg_factor=7.0),
                               weight_reduce_loss(elementwise, w, "mean", 7.0))
    torch.testing.assert_close(seeded(loss, pred, labels, weight, reduction_override="sum"),
                               (elementwise * w).sum())
    torch.testing.assert_close(seeded(loss, pred, labels, weight), (elementwise * w).mean())
    assert seeded(loss, pred, labels, torch.zeros_like(weight)).item() == 0
    with pytest.raises(ValueError, match="avg_factor"):
        loss(pred, labels, weight, avg_factor=7.0, reduction_override="sum")
    with pytest.raises(ValueError, match="reduction_override"):
        loss(pred, labels, reduction_override="avg")


def test_empty_inputs_stay_finite() -> None:
    loss = sized(FederatedLoss(class_counts=COUNTS, num_sample_classes=2))
    pred = torch.zeros(0, C, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    for kwargs in ({}, {"avg_factor": 1.0}, {"reduction_override": "sum"}):
        value = loss(pred, labels, torch.zeros(0), **kwargs)
        assert value.item() == 0
    value.backward()
    assert pred.grad is not None and pred.grad.shape == (0, C)


def test_non_finite_logits_are_never_hidden_by_the_sampling() -> None:
    pred, labels, _ = random_inputs(4, n=4)
    labels[:] = C  # background only: classes 1.. are sampled negatives or not trained at all
    chosen = torch.tensor([True, False, False, False, False])
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = pred.clone()
        x[0, 3] = bad  # class 3 is not sampled
        loss = federated_loss(x, labels, chosen)
        assert not torch.isfinite(loss[0, 3]) and torch.isfinite(loss[1:]).all()
        assert not torch.isfinite(loss.sum())


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(num_sample_classes=0), ValueError, "num_sample_classes must be >= 1, got 0"),
    (dict(num_sample_classes=2.5), TypeError, "num_sample_classes must be an int"),
    (dict(num_sample_classes=True), TypeError, "num_sample_classes"),
    (dict(power=-0.5), ValueError, "power must be >= 0, got -0.5"),
    (dict(power="0.5"), TypeError, "power"),
    (dict(use_sigmoid=False), ValueError, "use_sigmoid must be True"),
    (dict(class_counts=None), ValueError, "needs class counts"),
    (dict(class_counts=[1, -1]), ValueError, "class_counts must be >= 0"),
    (dict(class_counts=[1, 2], num_classes=3), ValueError, "class_counts has 2 entries"),
    (dict(reduction="max"), ValueError, "reduction"),
])
def test_invalid_arguments_raise_naming_them(kwargs: dict[str, Any], error: type[Exception],
                                             match: str) -> None:
    with pytest.raises(error, match=match):
        FederatedLoss(**kwargs)


def test_bad_inputs_raise() -> None:
    loss = sized(FederatedLoss())
    pred, labels, _ = random_inputs(5)
    with pytest.raises(ValueError, match=r"num_classes=5\) has no class counts.*ClassStatsHook"):
        loss(pred, labels)
    with pytest.raises(ValueError, match=r"class_counts has 4 entries.*head num_classes: 5"):
        loss.set_class_counts([1, 2, 3, 4])
    loss.set_class_counts(COUNTS)
    with pytest.raises(ValueError, match=r"pred has 6 columns.*expected \(5,\)"):
        loss(torch.randn(3, C + 1), labels[:3])
    with pytest.raises(ValueError, match=r"labels in \[0, 5\]: .* or 5, the background"):
        loss(pred, labels + 1)
    with pytest.raises(ValueError, match="only as the loss_cls of an RoI head"):
        FederatedLoss(class_counts=COUNTS)(pred, labels)


@pytest.mark.parametrize("cfg", [
    dict(type="FederatedLoss", use_sigmoid=True),
    dict(type="FederatedLoss", class_counts=COUNTS, num_sample_classes=3, power=1.0,
         loss_weight=2.0),
])
def test_build_from_config(cfg: dict[str, Any]) -> None:
    loss = MODELS.build(copy.deepcopy(cfg))
    assert isinstance(loss, FederatedLoss) and loss.counts_by == "image"
    assert loss.counts_from_dataset == ("class_counts" not in cfg)
    assert loss.num_sample_classes == cfg.get("num_sample_classes", 50)
    assert loss.power == cfg.get("power", 0.5) and loss.loss_weight == cfg.get("loss_weight", 1)


# -- heads ---------------------------------------------------------------------------------------


def test_bbox_head_has_no_background_output_and_predicts_sigmoid() -> None:
    torch.manual_seed(0)
    head = roi_head(dict(type="FederatedLoss", use_sigmoid=True, num_sample_classes=2))
    assert head.loss_cls.num_classes == C and head.fc_cls.out_features == C
    head.loss_cls.set_class_counts(COUNTS)
    losses, logits, scores = train_step_then_scores(head)
    assert torch.isfinite(losses["loss_cls"]) and "acc" in losses
    torch.testing.assert_close(scores, torch.cat([logits.sigmoid(), torch.zeros(N, 1)], 1))


def test_faster_rcnn_trains_one_step_and_predicts() -> None:
    torch.manual_seed(0)
    model = tiny_detector("faster-rcnn_r50_fpn", dict(type="FederatedLoss", use_sigmoid=True,
                                                      num_sample_classes=2))
    head = model.roi_head.bbox_head
    head.loss_cls.set_class_counts(COUNTS)
    model.train()
    loss, log_vars = model.parse_losses(model(**model.data_preprocessor(tiny_batch(0), True),
                                              mode="loss"))
    assert torch.isfinite(loss) and log_vars["loss_cls"] > 0
    loss.backward()
    assert head.fc_cls.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(tiny_batch(1), False), mode="predict")
    for result in results:
        scores, labels = result.pred_instances.scores, result.pred_instances.labels
        assert ((scores >= 0) & (scores <= 1)).all() and (labels < C).all()


# -- through mmengine's Runner -------------------------------------------------------------------


@pytest.mark.slow
def test_runner_trains_faster_rcnn_with_image_counts_from_the_hook(tmp_path: Path,
                                                                  tiny_root: Path) -> None:
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(tiny_config(tmp_path, tiny_root,
                                      "federated_faster-rcnn_r18tiny_fpn_1k_ltsynth.py", "fed"))
    cfg.work_dir = str(tmp_path / "work")
    assert cfg.custom_hooks == [dict(type="ClassStatsHook")]
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    loss = runner.model.roi_head.bbox_head.loss_cls
    assert isinstance(loss, FederatedLoss) and loss.num_classes == 4  # from the head
    train = class_stats_from_coco(tiny_root / "annotations/train.json")
    assert train.image_counts.tolist() != train.instance_counts.tolist()
    # The hook's by='instance', but the federated loss asks for image counts.
    assert loss.get_class_counts().tolist() == train.image_counts.tolist()
    state = torch.load(tmp_path / "work" / "iter_2.pth", map_location="cpu")["state_dict"]
    assert state["roi_head.bbox_head.loss_cls.class_counts"].tolist() == (
        train.image_counts.tolist())
