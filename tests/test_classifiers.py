"""Classifier variants: the cosine RoI classifier and the class-prior bias of sigmoid heads.

References: the cosine formula written out as a slow loop and mmdet's ``NormedLinear``; the
prior bias against ``-log((1 - pi) / pi)`` and mmengine's ``bias_init_with_prob`` (RetinaNet's
constant prior). Both train through mmengine's Runner on the tiny synthetic set.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from mmdet.models.layers import NormedLinear
from mmdet.registry import HOOKS, MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import bias_init_with_prob
from mmengine.runner import Runner
from torch import nn

import mmimb  # noqa: F401  (registers the head, the layer and the hook)
from mmimb.hooks import PriorBiasHook
from mmimb.hooks.prior_bias import class_priors, prior_bias
from mmimb.models import CosineLinear, CosineShared2FCBBoxHead
from mmimb.stats import class_stats
from tests.conftest import REPO, TINY

COSINE_CONFIG = "faster_rcnn/cosine_faster-rcnn_r18tiny_fpn_1k_ltsynth.py"
PRIOR_CONFIG = "retinanet/priorbias_retinanet_r18tiny_fpn_2k_ltsynth.py"


@pytest.fixture(autouse=True)
def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMIMB_DISABLE_COMPILE", "1")


# -- cosine classifier ---------------------------------------------------------------------------


def slow_cosine(x: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
    for i in range(x.shape[0]):
        for k in range(weight.shape[0]):
            out[i, k] = scale * (x[i] @ weight[k]) / (x[i].norm() * weight[k].norm())
    return out


@pytest.mark.parametrize("learnable", [False, True])
def test_cosine_logits_match_the_formula_and_mmdet_normed_linear(learnable: bool) -> None:
    torch.manual_seed(0)
    layer = CosineLinear(6, 4, scale=7.5, learnable_scale=learnable).double()
    x = torch.randn(5, 6, dtype=torch.float64) * 3
    logits = layer(x)
    torch.testing.assert_close(logits, slow_cosine(x, layer.weight.detach(), 7.5))
    assert float(logits.abs().max()) <= 7.5 + 1e-12
    normed = NormedLinear(6, 4, bias=False, tempearture=7.5, eps=0.0).double()
    normed.weight.data.copy_(layer.weight.data)
    torch.testing.assert_close(logits, normed(x))
    # Invariant to the norms of the feature and of the class weights; no bias.
    torch.testing.assert_close(layer(4 * x), logits)
    assert layer.bias is None
    assert (layer.log_scale is not None) == learnable


def test_learnable_scale_has_exact_gradients_and_is_saved() -> None:
    torch.manual_seed(1)
    layer = CosineLinear(5, 3, scale=4.0, learnable_scale=True).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    layer(x).sum().backward()
    assert layer.log_scale is not None and layer.log_scale.grad is not None
    assert float(layer.log_scale.grad.abs()) > 0
    assert torch.isclose(layer.log_scale.exp(), torch.tensor(4.0, dtype=torch.float64))
    assert set(layer.state_dict()) == {"weight", "log_scale"}
    assert set(CosineLinear(5, 3).state_dict()) == {"weight"}


def head_cfg(**kwargs: Any) -> dict[str, Any]:
    return dict(type="CosineShared2FCBBoxHead", in_channels=8, fc_out_channels=16,
                roi_feat_size=7, num_classes=3, **kwargs)


@pytest.mark.parametrize(("loss_cls", "outputs"), [
    (dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0), 3 + 1),
    (dict(type="SeesawLoss", num_classes=3), 3 + 2),  # the loss sizes the classifier
])
def test_head_scores_rois_with_the_cosine_of_its_shared_features(loss_cls: dict[str, Any],
                                                                 outputs: int) -> None:
    torch.manual_seed(2)
    head = MODELS.build(head_cfg(scale=12.0, loss_cls=loss_cls))
    assert isinstance(head, CosineShared2FCBBoxHead) and isinstance(head.fc_cls, CosineLinear)
    head.init_weights()
    rois = torch.randn(6, 8, 7, 7)
    cls_score, bbox_pred = head(rois)
    fc0, fc1 = head.shared_fcs
    features = torch.relu(fc1(torch.relu(fc0(rois.flatten(1)))))
    assert cls_score.shape == (6, outputs) and bbox_pred.shape == (6, 4 * 3)
    torch.testing.assert_close(cls_score, slow_cosine(features, head.fc_cls.weight.detach(),
                                                      12.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("scale", "error"), [
    (0.0, ValueError), (-1.0, ValueError), (float("nan"), TypeError), (float("inf"), TypeError),
    (True, TypeError), ("20", TypeError)])
def test_bad_scale_is_refused_with_its_name(scale: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="scale"):
        CosineLinear(4, 2, scale=scale)
    with pytest.raises(error, match="scale"):
        MODELS.build(head_cfg(scale=scale))


def test_head_refuses_a_second_classifier_config() -> None:
    with pytest.raises(ValueError, match="cls_predictor_cfg"):
        MODELS.build(head_cfg(cls_predictor_cfg=dict(type="Linear")))


# -- prior bias: the formula ---------------------------------------------------------------------


def test_priors_follow_the_instance_frequencies_with_retinanet_mean() -> None:
    counts = np.random.default_rng(3).integers(1, 500, size=9)
    priors = class_priors(counts)
    np.testing.assert_allclose(priors, 0.01 * counts / counts.mean())
    assert priors.mean() == pytest.approx(0.01)
    bias = prior_bias(priors)
    np.testing.assert_allclose(bias, -np.log((1 - priors) / priors))
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), priors)
    # Equal counts: every bias is RetinaNet's constant prior.
    np.testing.assert_allclose(prior_bias(class_priors([7, 7, 7])), bias_init_with_prob(0.01))


def test_priors_are_clipped_with_a_warning() -> None:
    counts = [1_000_000, 1, 1]
    with pytest.warns(UserWarning, match=r"\['car'\].*clipped"):
        priors = class_priors(counts, mean_prior=0.5, eps=1e-3, classes=("car", "a", "b"))
    assert priors[0] == pytest.approx(1 - 1e-3) and np.all(priors >= 1e-3)
    assert np.all(np.isfinite(prior_bias(priors)))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(counts=[4, 0, 2], classes=("a", "b", "c")), ValueError, r"\['b'\] have no training"),
    (dict(counts=[4, -1]), ValueError, ">= 0"),
    (dict(counts=[]), ValueError, "non-empty"),
    (dict(counts=[4, 2], mean_prior=0.0), ValueError, "mean_prior"),
    (dict(counts=[4, 2], mean_prior=1.0), ValueError, "mean_prior"),
    (dict(counts=[4, 2], eps=0.5), ValueError, "eps"),
])
def test_bad_counts_or_settings_are_refused(kwargs: dict[str, Any], error: type[Exception],
                                            match: str) -> None:
    with pytest.raises(error, match=match):
        class_priors(**kwargs)


# -- prior bias: the hook ------------------------------------------------------------------------


class ToyDataset(torch.utils.data.Dataset):
    """Labels only: what class_stats reads."""

    def __init__(self, image_labels: list[list[int]], classes: tuple[str, ...]) -> None:
        self.image_labels = image_labels
        self.metainfo = dict(classes=classes)

    def __len__(self) -> int:
        return len(self.image_labels)

    def get_data_info(self, idx: int) -> dict[str, Any]:
        return dict(instances=[dict(bbox_label=c, ignore_flag=0) for c in self.image_labels[idx]])


class Logger:
    def __init__(self) -> None:
        self.infos: list[str] = []

    def info(self, msg: str) -> None:
        self.infos.append(msg)

    def warning(self, msg: str) -> None:
        self.infos.append(msg)


def fake_runner(model: nn.Module, dataset: Any) -> Any:
    return SimpleNamespace(model=model, train_dataloader=SimpleNamespace(dataset=dataset),
                           logger=Logger())


def retinanet(num_classes: int = 3, loss_cls: dict[str, Any] | None = None) -> nn.Module:
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(REPO / "configs" / PRIOR_CONFIG)
    cfg.model.bbox_head.num_classes = num_classes
    if loss_cls is not None:
        cfg.model.bbox_head.loss_cls = loss_cls
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


TOY = ToyDataset([[0, 0, 1], [0, 2, 0], [0], []], ("cat", "dog", "eel"))  # 5, 1, 1 boxes


def test_hook_sets_the_bias_of_every_anchor_from_the_counts() -> None:
    model = retinanet()
    hook = HOOKS.build(dict(type="PriorBiasHook"))
    before = model.bbox_head.retina_cls.bias.detach().clone()
    np.testing.assert_allclose(before.numpy(), bias_init_with_prob(0.01), rtol=1e-6)
    hook.before_train(fake_runner(model, TOY))
    pi = 0.01 * np.array([5, 1, 1]) / np.mean([5, 1, 1])
    expected = -np.log((1 - pi) / pi)
    bias = model.bbox_head.retina_cls.bias.detach().numpy().reshape(-1, 3)  # [A, C]
    assert bias.shape[0] == model.bbox_head.num_base_priors == 9
    np.testing.assert_allclose(bias, np.tile(expected, (9, 1)), rtol=1e-6)


def test_a_bias_restored_from_a_checkpoint_is_kept_another_shape_is_not() -> None:
    model = retinanet()
    bias = model.bbox_head.retina_cls.bias
    hook = PriorBiasHook()
    hook.after_load_checkpoint(fake_runner(model, TOY), dict(state_dict={
        "module.bbox_head.retina_cls.bias": torch.zeros(bias.shape)}))
    before = bias.detach().clone()
    hook.before_train(fake_runner(model, TOY))
    assert torch.equal(bias, before)
    # A checkpoint trained on other classes: mmengine keeps the model's bias, so we set it.
    hook.after_load_checkpoint(fake_runner(model, TOY), dict(state_dict={
        "bbox_head.retina_cls.bias": torch.zeros(9 * 80)}))
    hook.before_train(fake_runner(model, TOY))
    assert not torch.equal(bias, before)


@pytest.mark.parametrize(("build", "hook_args", "dataset", "match"), [
    (lambda: retinanet(loss_cls=dict(type="CrossEntropyLoss")), {}, TOY, "softmax"),
    (lambda: retinanet(num_classes=4), {}, TOY, "3 classes but bbox_head has num_classes=4"),
    (retinanet, {}, ToyDataset([[0, 0], [2]], ("cat", "dog", "eel")),
     r"\['dog'\] have no training instance"),
    (retinanet, dict(head="roi_head"), TOY, "no module 'roi_head'"),
    (retinanet, dict(cls_layer="cls"), TOY, "no Conv2d named cls"),
    (lambda: retinanet(num_classes=5), dict(cls_layer="retina_reg"), TOY,
     "36 outputs, not a multiple of num_classes=5"),
    (lambda: nn.Sequential(), dict(head="0"), TOY, "no module"),
])
def test_hook_refuses_heads_it_cannot_initialise(build: Any, hook_args: dict[str, Any],
                                                 dataset: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PriorBiasHook(**hook_args).before_train(fake_runner(build(), dataset))


def test_hook_refuses_a_two_stage_detector() -> None:
    register_all_modules(init_default_scope=True)
    model = MODELS.build(Config.fromfile(REPO / "configs" / COSINE_CONFIG).model)
    with pytest.raises(ValueError, match="no module 'bbox_head'"):
        PriorBiasHook().before_train(fake_runner(model, TOY))
    with pytest.raises(ValueError, match="not a dense head with a sigmoid classifier"):
        PriorBiasHook(head="roi_head.bbox_head").before_train(fake_runner(model, TOY))


@pytest.mark.parametrize(("kwargs", "error"), [
    (dict(mean_prior=0), ValueError), (dict(mean_prior=1.5), ValueError),
    (dict(eps=0.7), ValueError), (dict(mean_prior="0.01"), TypeError), (dict(head=""), TypeError),
    (dict(cls_layer=3), TypeError)])
def test_hook_arguments_are_checked_when_built(kwargs: dict[str, Any],
                                               error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        HOOKS.build(dict(type="PriorBiasHook", **kwargs))


# -- through mmengine's Runner on the tiny synthetic set -----------------------------------------


class RecordBias(Hook):
    """Records the classifier bias when training starts, after every other hook's before_train."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.bias: torch.Tensor | None = None

    def before_train(self, runner: Runner) -> None:
        self.bias = runner.model.bbox_head.retina_cls.bias.detach().clone()


def tiny_runner(config: str, data_root: Path, work_dir: Path, name: str, max_iters: int,
                hook: Hook | None = None, **cfg_options: Any) -> Runner:
    """The shipped config, trained for a few iterations on the tiny set, without validation."""
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(REPO / "configs" / config)
    synthetic = asdict(TINY)
    loader = cfg.train_dataloader
    loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    loader.dataset.update(data_root=str(data_root), synthetic=synthetic,
                          pipeline=[dict(type="LoadImageFromFile"),
                                    dict(type="LoadAnnotations", with_bbox=True),
                                    dict(type="PackDetInputs")])
    head = cfg.model.get("bbox_head") or cfg.model.roi_head.bbox_head
    head.num_classes = TINY.num_classes
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg",
                "test_evaluator"):
        cfg[key] = None
    cfg.train_cfg.update(max_iters=max_iters, val_interval=max_iters + 1)
    cfg.param_scheduler = None
    cfg.default_hooks.checkpoint.update(interval=max_iters)
    cfg.default_hooks.logger.update(interval=1)
    cfg.merge_from_dict(cfg_options)
    cfg.update(work_dir=str(work_dir), experiment_name=name, log_level="WARNING")
    runner = Runner.from_cfg(cfg)
    if hook is not None:  # after from_cfg, which copies the config and its hooks
        runner.register_hook(hook)
    return runner


@pytest.mark.slow
def test_cosine_head_trains_through_the_runner(tmp_path: Path, tiny_root: Path) -> None:
    runner = tiny_runner(COSINE_CONFIG, tiny_root, tmp_path, "cosine", max_iters=3, **{
        "model.roi_head.bbox_head.learnable_scale": True})
    runner.train()
    fc_cls = runner.model.roi_head.bbox_head.fc_cls
    assert isinstance(fc_cls, CosineLinear) and fc_cls.out_features == TINY.num_classes + 1
    assert math.isfinite(runner.message_hub.get_scalar("train/loss_cls").current())
    state = torch.load(tmp_path / "iter_3.pth", map_location="cpu")["state_dict"]
    # The scale was learned (AdamW moved it from log 20) and is saved with the weights.
    assert state["roi_head.bbox_head.fc_cls.log_scale"] != pytest.approx(math.log(20.0))
    assert "roi_head.bbox_head.fc_cls.bias" not in state


@pytest.mark.slow
def test_prior_bias_is_set_before_training_and_kept_on_resume(tmp_path: Path,
                                                              tiny_root: Path) -> None:
    record = RecordBias()
    runner = tiny_runner(PRIOR_CONFIG, tiny_root, tmp_path, "prior", max_iters=2,
                         hook=record)
    runner.train()
    counts = class_stats(runner.train_dataloader.dataset).instance_counts
    pi = 0.01 * counts / counts.mean()
    assert record.bias is not None
    np.testing.assert_allclose(record.bias.numpy().reshape(-1, TINY.num_classes),
                               np.tile(-np.log((1 - pi) / pi), (9, 1)), rtol=1e-5)
    trained = torch.load(tmp_path / "iter_2.pth", map_location="cpu")["state_dict"][
        "bbox_head.retina_cls.bias"]
    assert not torch.equal(trained, record.bias)  # two steps of training moved it

    again = RecordBias()
    resumed = tiny_runner(PRIOR_CONFIG, tiny_root, tmp_path, "resume", max_iters=3,
                          hook=again, resume=True,
                          load_from=str(tmp_path / "iter_2.pth"))
    resumed.train()
    assert again.bias is not None and torch.equal(again.bias, trained)
