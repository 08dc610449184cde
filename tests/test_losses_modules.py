"""Registered loss modules: mmdet's contract, class-balanced weights, counts, real detectors."""

from __future__ import annotations

import copy
from typing import Any

import mmengine.registry
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from mmdet.models.losses import CrossEntropyLoss, FocalLoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.runner.checkpoint import load_state_dict
from mmengine.structures import InstanceData

import mmimb  # noqa: F401  (registers the losses)
from mmimb.losses import (
    ClassBalancedCrossEntropyLoss,
    ClassBalancedFocalLoss,
    SoftmaxFocalLoss,
    one_hot_targets,
)
from mmimb.stats import class_balanced_weights

N, C = 41, 5
COUNTS = [500, 60, 7, 0, 1]
LOSSES = (ClassBalancedFocalLoss, SoftmaxFocalLoss, ClassBalancedCrossEntropyLoss)


def random_inputs(seed: int, columns: int = C, n: int = N,
                  dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
    """Logits ``[n, columns]``, labels in ``[0, C]`` (``C`` = background) and weights ``[n]``."""
    gen = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, columns, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, C + 1, (n,), generator=gen)
    weight = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    weight[:3] = 0
    return pred, labels, weight


@pytest.fixture(autouse=True)
def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled path is tested in test_losses_functional.py; compiling here only costs time."""
    monkeypatch.setenv("MMIMB_DISABLE_COMPILE", "1")


def slow_cb_weights(counts: list[int], beta: float) -> list[float]:
    """Cui et al. (CVPR 2019), eq. 3, written out; a zero count is treated as one."""
    raw = [(1 - beta) / (1 - beta ** max(n, 1)) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


def test_names_do_not_collide_with_mmdet_or_mmengine() -> None:
    register_all_modules()
    for cls in LOSSES:
        assert MODELS.get(cls.__name__) is cls
        assert cls.__name__ not in mmengine.registry.MODELS.module_dict
        # mmdet's own module set (without mmimb) must not contain the name either.
        owners = {type_.__module__.split(".")[0] for name, type_ in MODELS.module_dict.items()
                  if name == cls.__name__}
        assert owners == {"mmimb"}


@pytest.mark.parametrize("cfg", [
    dict(type="ClassBalancedFocalLoss", num_classes=C, class_counts=COUNTS, beta=0.99),
    dict(type="SoftmaxFocalLoss", num_classes=C, class_counts="auto"),
    dict(type="ClassBalancedCrossEntropyLoss", use_sigmoid=True, class_weight=[1.0] * C),
])
def test_build_from_config(cfg: dict[str, Any]) -> None:
    loss = MODELS.build(copy.deepcopy(cfg))
    assert type(loss).__name__ == cfg["type"] and loss.num_classes == C
    assert loss.counts_from_dataset == (cfg.get("class_counts") == "auto")


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999, 0.9999])
def test_class_balanced_weights_against_slow_reference(beta: float) -> None:
    counts = [5000, 60, 7, 0, 1, 250]
    np.testing.assert_allclose(class_balanced_weights(counts, beta),
                               slow_cb_weights(counts, beta), rtol=1e-9)


def test_cb_weights_match_slow_reference_and_zero_counts_are_finite() -> None:
    loss = ClassBalancedFocalLoss(class_counts=COUNTS, beta=0.99)
    weights = loss.class_weights()
    assert weights is not None
    np.testing.assert_allclose(weights.numpy(), slow_cb_weights(COUNTS, 0.99), rtol=1e-6)
    # The zero-count class is weighted like a class with one instance: the largest, finite.
    assert torch.isfinite(weights).all() and weights[3] == weights.max() == weights[4]
    np.testing.assert_allclose(weights.sum().item(), C, rtol=1e-6)


@pytest.mark.parametrize(("reduction", "avg_factor"), [
    ("none", None), ("mean", None), ("sum", None), ("none", 17.0), ("mean", 17.0)])
def test_scalar_alpha_equals_mmdet_focal_loss(reduction: str, avg_factor: float | None) -> None:
    pred, labels, weight = random_inputs(0)
    ours = ClassBalancedFocalLoss(gamma=1.5, alpha=0.3, loss_weight=2.0, use_compile=False)
    theirs = FocalLoss(gamma=1.5, alpha=0.3, loss_weight=2.0)
    for w in (None, weight):
        torch.testing.assert_close(
            ours(pred, labels, w, avg_factor, reduction_override=reduction),
            theirs(pred, labels, w, avg_factor, reduction_override=reduction))


def test_cb_focal_against_slow_per_element_loop() -> None:
    pred, labels, weight = random_inputs(1, n=8)
    alpha = [0.1, 0.3, 0.5, 0.7, 0.9]
    loss = ClassBalancedFocalLoss(alpha=alpha, class_counts=COUNTS, beta=0.9, reduction="sum",
                                  use_compile=False)
    cb = slow_cb_weights(COUNTS, 0.9)
    expected = 0.0
    for n in range(8):
        for c in range(C):
            p = torch.sigmoid(pred[n, c]).item()
            pos = labels[n].item() == c
            p_t, a_t = (p, alpha[c]) if pos else (1 - p, 1 - alpha[c])
            expected += -weight[n].item() * cb[c] * a_t * (1 - p_t) ** 2 * np.log(p_t)
    torch.testing.assert_close(loss(pred, labels, weight).item(), expected, rtol=1e-6, atol=0)


def test_sigmoid_cb_cross_entropy_weights_both_terms() -> None:
    pred, labels, weight = random_inputs(2)
    cb = torch.tensor(slow_cb_weights(COUNTS, 0.999), dtype=torch.float64)
    loss = ClassBalancedCrossEntropyLoss(use_sigmoid=True, class_counts=COUNTS,
                                         reduction="none")
    target = one_hot_targets(labels, C, torch.float64)
    expected = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * cb
    ours = loss(pred, labels)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-12)
    # mmdet's class_weight is a pos_weight: it agrees on the positive terms only.
    mmdet_loss = CrossEntropyLoss(use_sigmoid=True, class_weight=cb.tolist(), reduction="none")
    theirs = mmdet_loss(pred, target)
    pos = target.bool()
    torch.testing.assert_close(ours[pos], theirs[pos], rtol=1e-6, atol=1e-7, check_dtype=False)
    assert not torch.allclose(ours[~pos], theirs[~pos].to(ours.dtype))


@pytest.mark.parametrize("columns", [C, C + 1])
def test_softmax_cb_cross_entropy_equals_weighted_cross_entropy(columns: int) -> None:
    pred, labels, weight = random_inputs(3, columns=columns)
    labels = labels.clamp(max=columns - 1)
    cb = slow_cb_weights(COUNTS, 0.99)
    full = cb + [1.0] * (columns - C)  # background weight 1
    loss = ClassBalancedCrossEntropyLoss(class_counts=COUNTS, beta=0.99)
    mmdet_loss = CrossEntropyLoss(class_weight=full)
    torch.testing.assert_close(loss(pred, labels, weight, avg_factor=9.0),
                               mmdet_loss(pred, labels, weight, avg_factor=9.0), rtol=1e-6,
                               atol=1e-7, check_dtype=False)
    focal0 = SoftmaxFocalLoss(gamma=0.0, class_counts=COUNTS, beta=0.99)
    torch.testing.assert_close(focal0(pred, labels, weight), loss(pred, labels, weight))


def test_beta_zero_is_unweighted() -> None:
    pred, labels, weight = random_inputs(4, columns=C + 1)
    torch.testing.assert_close(
        SoftmaxFocalLoss(class_counts=COUNTS, beta=0.0)(pred, labels, weight),
        SoftmaxFocalLoss()(pred, labels, weight))
    torch.testing.assert_close(
        ClassBalancedFocalLoss(class_counts=COUNTS, beta=0.0, use_compile=False)(
            pred[:, :C], labels, weight),
        ClassBalancedFocalLoss(use_compile=False)(pred[:, :C], labels, weight))


def make_losses() -> list[tuple[torch.nn.Module, int, tuple[int, ...]]]:
    """Each loss with its number of logit columns and its ``'none'`` output shape."""
    return [
        (ClassBalancedFocalLoss(class_counts=COUNTS, use_compile=False), C, (N, C)),
        (ClassBalancedCrossEntropyLoss(use_sigmoid=True, class_counts=COUNTS,
                                       use_compile=False), C, (N, C)),
        (SoftmaxFocalLoss(class_counts=COUNTS), C + 1, (N,)),
        (ClassBalancedCrossEntropyLoss(class_counts=COUNTS), C + 1, (N,)),
    ]


@pytest.mark.parametrize("index", range(4))
def test_reduction_contract(index: int) -> None:
    loss, columns, none_shape = make_losses()[index]
    pred, labels, weight = random_inputs(5, columns=columns)
    labels = labels.clamp(max=columns - 1)
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


@pytest.mark.parametrize("index", range(4))
def test_empty_inputs_stay_finite(index: int) -> None:
    loss, columns, _ = make_losses()[index]
    pred = torch.zeros(0, columns, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    for kwargs in ({}, {"avg_factor": 1.0}, {"reduction_override": "sum"}):
        value = loss(pred, labels, torch.zeros(0), **kwargs)
        assert value.item() == 0
    value.backward()
    assert pred.grad is not None and pred.grad.shape == (0, columns)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("index", range(4))
def test_half_precision_logits_of_100_are_finite(index: int, dtype: torch.dtype) -> None:
    loss, columns, _ = make_losses()[index]
    pred = (torch.randint(0, 2, (N, columns)) * 200 - 100).to(dtype).requires_grad_()
    _, labels, weight = random_inputs(6, columns=columns)
    value = loss(pred, labels.clamp(max=columns - 1), weight.to(dtype), avg_factor=5.0)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize(("cls", "kwargs", "error", "match"), [
    (ClassBalancedFocalLoss, dict(beta=1.0, class_counts=COUNTS), ValueError, "beta"),
    (ClassBalancedFocalLoss, dict(beta=-0.1), ValueError, "beta"),
    (ClassBalancedFocalLoss, dict(gamma=-1.0), ValueError, "gamma"),
    (ClassBalancedFocalLoss, dict(alpha=1.5), ValueError, "alpha"),
    (ClassBalancedFocalLoss, dict(alpha=[0.2, -0.1]), ValueError, "alpha"),
    (ClassBalancedFocalLoss, dict(alpha=[0.2] * 4, class_counts=COUNTS), ValueError, "alpha"),
    (ClassBalancedFocalLoss, dict(use_sigmoid=False), ValueError, "use_sigmoid"),
    (ClassBalancedFocalLoss, dict(reduction="avg"), ValueError, "reduction"),
    (ClassBalancedFocalLoss, dict(loss_weight="1"), TypeError, "loss_weight"),
    (ClassBalancedFocalLoss, dict(gamma=None), TypeError, "gamma"),
    (SoftmaxFocalLoss, dict(use_sigmoid=True), ValueError, "use_sigmoid"),
    (SoftmaxFocalLoss, dict(num_classes=4, class_counts=COUNTS), ValueError, "class_counts"),
    (SoftmaxFocalLoss, dict(class_counts=[3, -1]), ValueError, "class_counts"),
    (SoftmaxFocalLoss, dict(class_counts=[3, 1.5]), ValueError, "whole numbers"),
    (SoftmaxFocalLoss, dict(class_counts="all", num_classes=2), ValueError, "class_counts"),
    (SoftmaxFocalLoss, dict(num_classes=0), ValueError, "num_classes"),
    (SoftmaxFocalLoss, dict(num_classes=2.0), TypeError, "num_classes"),
    (ClassBalancedCrossEntropyLoss, dict(class_weight=[1, -1]), ValueError, "class_weight"),
    (ClassBalancedCrossEntropyLoss, dict(class_weight=[1, float("nan")]), ValueError,
     "class_weight"),
    (ClassBalancedCrossEntropyLoss, dict(class_weight=[1], class_counts=[1]), ValueError,
     "class_weight or class_counts"),
    (ClassBalancedCrossEntropyLoss, dict(use_sigmoid=1), TypeError, "use_sigmoid"),
])
def test_invalid_arguments_raise_naming_them(cls: type, kwargs: dict[str, Any],
                                             error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_wrong_number_of_columns_raises() -> None:
    pred, labels, _ = random_inputs(7, columns=C + 2)
    with pytest.raises(ValueError, match=f"num_classes={C}"):
        SoftmaxFocalLoss(class_counts=COUNTS)(pred, labels)
    with pytest.raises(ValueError, match=f"num_classes={C}"):
        ClassBalancedFocalLoss(num_classes=C)(pred, labels)


def test_counts_validation_names_the_numbers() -> None:
    loss = SoftmaxFocalLoss(num_classes=3, class_counts="auto")
    with pytest.raises(ValueError, match="4 entries .* num_classes=3"):
        loss.set_class_counts([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"classes \[1\] have \[-2.0\]"):
        loss.set_class_counts([1, -2, 3])
    with pytest.raises(ValueError, match="without class_counts"):
        SoftmaxFocalLoss().set_class_counts([1, 2])


def test_auto_counts_missing_at_first_forward_raise() -> None:
    loss = ClassBalancedFocalLoss(num_classes=C, class_counts="auto")
    pred, labels, _ = random_inputs(8)
    assert loss.get_class_counts() is None
    with pytest.raises(ValueError, match=f"class_counts='auto', num_classes={C}.*ClassStatsHook"):
        loss(pred, labels)
    loss.set_class_counts(COUNTS)
    torch.testing.assert_close(
        loss(pred, labels), ClassBalancedFocalLoss(class_counts=COUNTS)(pred, labels))


def test_counts_buffer_round_trips_through_state_dict_and_mmengine() -> None:
    trained = torch.nn.Sequential(SoftmaxFocalLoss(num_classes=C, class_counts="auto"))
    trained[0].set_class_counts(COUNTS)
    state = trained.state_dict()
    assert list(state) == ["0.class_counts"]  # the derived weights are not saved
    assert state["0.class_counts"].tolist() == COUNTS
    pred, labels, weight = random_inputs(9, columns=C + 1)
    for load in (lambda m, s: m.load_state_dict(s), lambda m, s: load_state_dict(m, s)):
        resumed = torch.nn.Sequential(SoftmaxFocalLoss(num_classes=C, class_counts="auto"))
        load(resumed, copy.deepcopy(state))
        assert resumed[0].get_class_counts().tolist() == COUNTS
        torch.testing.assert_close(resumed[0](pred, labels, weight),
                                   trained[0](pred, labels, weight))


# -- real detectors ----------------------------------------------------------------------------

TINY_BACKBONE = dict(type="ResNet", depth=18, base_channels=8, num_stages=4, out_indices=(1, 2, 3),
                     frozen_stages=-1, norm_cfg=dict(type="BN"), norm_eval=False, init_cfg=None)
TINY_NECK = dict(type="FPN", in_channels=[16, 32, 64], out_channels=16, num_outs=3)


def tiny_detector(base: str, loss_cls: dict[str, Any]) -> torch.nn.Module:
    """mmdet's base RetinaNet / Faster R-CNN with a tiny backbone and ``loss_cls`` swapped in."""
    register_all_modules()
    model = Config.fromstring(f"_base_ = 'mmdet::_base_/models/{base}.py'", ".py").model
    model.backbone = TINY_BACKBONE
    model.neck = TINY_NECK
    if "bbox_head" in model:  # RetinaNet
        model.bbox_head.update(num_classes=C, in_channels=16, feat_channels=16, stacked_convs=1,
                               loss_cls=loss_cls,
                               anchor_generator=dict(octave_base_scale=2, strides=[8, 16, 32]))
    else:  # Faster R-CNN
        model.rpn_head.update(in_channels=16, feat_channels=16,
                              anchor_generator=dict(scales=[2, 4], strides=[8, 16, 32]))
        model.roi_head.bbox_roi_extractor.update(out_channels=16, featmap_strides=[8, 16, 32])
        model.roi_head.bbox_head.update(in_channels=16, fc_out_channels=32, num_classes=C,
                                        loss_cls=loss_cls)
        model.train_cfg.rcnn.sampler.num = 64
    return MODELS.build(model)


def tiny_batch(seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, 64, 64), generator=gen, dtype=torch.uint8))
        sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                             scale_factor=(1.0, 1.0)))
        xy = torch.randint(0, 32, (3, 2), generator=gen).float()
        wh = torch.randint(12, 32, (3, 2), generator=gen).float()
        sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                           labels=torch.randint(0, C, (3,), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize(("base", "loss_cls"), [
    ("retinanet_r50_fpn", dict(type="ClassBalancedFocalLoss", use_sigmoid=True,
                               class_counts=COUNTS, beta=0.99, use_compile=False)),
    ("faster-rcnn_r50_fpn", dict(type="ClassBalancedCrossEntropyLoss", use_sigmoid=False,
                                 class_counts=COUNTS, beta=0.99)),
    ("faster-rcnn_r50_fpn", dict(type="SoftmaxFocalLoss", class_counts=COUNTS, beta=0.99)),
])
def test_detector_trains_one_step_and_predicts(base: str, loss_cls: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = tiny_detector(base, loss_cls)
    head = model.bbox_head if hasattr(model, "bbox_head") else model.roi_head.bbox_head
    assert type(head.loss_cls).__name__ == loss_cls["type"]
    model.train()
    data = model.data_preprocessor(tiny_batch(0), True)
    loss, log_vars = model.parse_losses(model(**data, mode="loss"))
    assert torch.isfinite(loss) and log_vars["loss_cls"] > 0
    loss.backward()
    cls_layer = head.retina_cls if hasattr(head, "retina_cls") else head.fc_cls
    assert cls_layer.weight.grad is not None and cls_layer.weight.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(tiny_batch(1), False), mode="predict")
    assert len(results) == 2
    for result in results:
        scores = result.pred_instances.scores
        assert torch.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
        assert (result.pred_instances.labels < C).all()


# -- the number of classes is written once (issue 11, item 3) ----------------------------------


def bbox_head(loss_cls: dict[str, Any], num_classes: int = 3) -> Any:
    register_all_modules(init_default_scope=False)
    return MODELS.build(dict(type="Shared2FCBBoxHead", in_channels=4, fc_out_channels=8,
                             roi_feat_size=7, num_classes=num_classes, loss_cls=loss_cls))


@pytest.mark.parametrize("loss_cls", [
    dict(type="ClassBalancedCrossEntropyLoss", class_counts="auto"),
    dict(type="SoftmaxFocalLoss", class_counts="auto"),
    dict(type="ClassBalancedCrossEntropyLoss", use_sigmoid=True, class_counts="auto"),
    dict(type="ClassBalancedFocalLoss", use_sigmoid=True, class_counts="auto"),
], ids=["cb-ce-softmax", "softmax-focal", "cb-ce-sigmoid", "cb-focal-sigmoid"])
def test_auto_counts_in_a_bbox_head_take_num_classes_from_the_head(
        loss_cls: dict[str, Any]) -> None:
    head = bbox_head(loss_cls)  # the loss config has no num_classes
    loss = head.loss_cls
    assert loss.num_classes == 3 and loss.class_counts.tolist() == [-1, -1, -1]
    sigmoid = loss.use_sigmoid
    assert head.fc_cls.out_features == (3 if sigmoid else 4)
    loss.set_class_counts([30, 3, 0])  # as ClassStatsHook does
    x = torch.randn(6, head.fc_cls.out_features)
    labels = torch.tensor([0, 1, 2, 3, 3, 0])
    assert torch.isfinite(loss(x, labels))
    scores = loss.get_activation(x)  # what BBoxHead predicts with: C + 1 columns
    expected = (torch.cat([x.sigmoid(), torch.zeros(6, 1)], 1) if sigmoid else x.softmax(1))
    torch.testing.assert_close(scores, expected)
    assert head.custom_activation == sigmoid  # sigmoid heads log get_accuracy's accuracy
    accuracy = loss.get_accuracy(x, labels)["acc"]
    predicted = torch.where(x.max(1).values >= 0, x.argmax(1), 3) if sigmoid else x.argmax(1)
    torch.testing.assert_close(accuracy, (predicted == labels).float().mean()[None] * 100,
                               check_dtype=False)


def test_head_and_loss_disagreeing_raise_naming_both_and_the_training_set() -> None:
    with pytest.raises(ValueError, match=r"the head has num_classes=3 but the loss has "
                                         r"num_classes=4 \(head num_classes: 3; loss "
                                         r"num_classes: 4; training set / class_counts: not "
                                         r"counted yet classes\)"):
        bbox_head(dict(type="SoftmaxFocalLoss", num_classes=4, class_counts="auto"))
    with pytest.raises(ValueError, match=r"head has num_classes=3 .*loss num_classes: 5"):
        bbox_head(dict(type="ClassBalancedCrossEntropyLoss", class_counts=COUNTS))
    loss = bbox_head(dict(type="ClassBalancedCrossEntropyLoss", class_counts="auto")).loss_cls
    with pytest.raises(ValueError, match=r"class_counts has 5 entries .*num_classes=3 \(head "
                                         r"num_classes: 3; loss num_classes: None; training "
                                         r"set / class_counts: 5 classes\)"):
        loss.set_class_counts(COUNTS)


def test_in_a_dense_head_num_classes_comes_from_the_training_set() -> None:
    register_all_modules(init_default_scope=False)
    head = MODELS.build(dict(type="RetinaHead", num_classes=3, in_channels=8, stacked_convs=1,
                             feat_channels=8,
                             loss_cls=dict(type="ClassBalancedFocalLoss", use_sigmoid=True,
                                           class_counts="auto", use_compile=False)))
    loss = head.loss_cls
    assert loss.num_classes is None and head.cls_out_channels == 3  # no get_cls_channels call
    x = torch.randn(6, 3)
    # Dense heads also score through get_activation (custom_cls_channels): their own sigmoid.
    torch.testing.assert_close(loss.get_activation(x), x.sigmoid())
    loss.set_class_counts([30, 3, 0])  # ClassStatsHook, from the training set
    assert loss.num_classes == 3 and torch.isfinite(loss(x, torch.tensor([0, 1, 2, 3, 3, 0])))
    with pytest.raises(ValueError, match=r"pred has 4 columns.*num_classes=3"):
        loss(torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 0]))
    softmax = SoftmaxFocalLoss(class_counts="auto")  # a softmax dense head: C + 1 columns
    x = torch.randn(6, 4)
    torch.testing.assert_close(softmax.get_activation(x), x.softmax(1)[:, :-1])
