"""The torchvision fallback for mmcv's ops equals mmcv's kernels, and is used only when needed.

There is no GPU here, so the CUDA path is run on CPU: ``route_mmcv_ops(devices=('cpu',))``
treats CPU tensors as tensors without mmcv kernels, and mmcv's Python code (``nms``,
``batched_nms``, ``RoIAlign``, ``sigmoid_focal_loss``, whole detectors) then reaches the
fallbacks through the very calls it makes on a GPU. The references are mmcv's own CPU kernels,
computed before routing, and torchvision's focal loss (mmcv has no CPU focal-loss kernel).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import mmcv._ext
import mmcv.ops
import numpy as np
import pytest
import torch
import torchvision.ops
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
from mmdet.models.losses.focal_loss import sigmoid_focal_loss as mmdet_cuda_focal_loss
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.structures import InstanceData
from torch import Tensor, nn

from mmimb import ops_fallback
from mmimb.ops_fallback import RoutedKernel, needs_fallback, route_mmcv_ops, unroute_mmcv_ops
from tests.conftest import REPO

#: IoU thresholds of our configs: RetinaNet and the R-CNN head 0.5, the RPN 0.7.
CONFIG_IOUS = (0.5, 0.7)


@pytest.fixture
def notices(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The notices logged by the fallback, as (message, level); the once-flag starts unset."""
    logged: list[tuple[str, int]] = []

    def record(msg: str, logger: Any = None, level: int = logging.INFO) -> None:
        logged.append((msg, level))

    monkeypatch.setattr(ops_fallback, "_notice_shown", False)
    monkeypatch.setattr(ops_fallback, "print_log", record)
    return logged


@pytest.fixture
def fallback_calls(monkeypatch: pytest.MonkeyPatch,
                   notices: list[tuple[str, int]]) -> Iterator[Counter[str]]:
    """Route every mmcv kernel as if CPU had no mmcv kernels; count the fallbacks' calls."""
    calls: Counter[str] = Counter()

    def counting(name: str, fallback: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fallback(*args, **kwargs)
        return call

    for name, fallback in list(ops_fallback.FALLBACKS.items()):
        monkeypatch.setitem(ops_fallback.FALLBACKS, name, counting(name, fallback))
    route_mmcv_ops(devices=("cpu",))
    try:
        yield calls
    finally:
        unroute_mmcv_ops()


@contextlib.contextmanager
def unrouted() -> Iterator[None]:
    """mmcv's own kernels inside the block; routed as before afterwards (the references)."""
    routed = mmcv._ext.nms
    devices = routed.devices if isinstance(routed, RoutedKernel) else None
    unroute_mmcv_ops()
    try:
        yield
    finally:
        if devices is not None:
            route_mmcv_ops(devices=devices)


def _must_not_run(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the fallback ran on a device that has mmcv kernels")


def random_boxes(num: int, seed: int, size: float = 100.0) -> tuple[Tensor, Tensor]:
    """``Tensor[N, 4]`` overlapping boxes and ``Tensor[N]`` distinct scores (no sort ties)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * size
    wh = torch.rand(num, 2, generator=g) * 0.3 * size + 1.0
    scores = (torch.randperm(num, generator=g).float() + 0.5) / num
    return torch.cat([xy, xy + wh], dim=1), scores


# --- when to route -------------------------------------------------------------------------------

@pytest.mark.parametrize(("cuda_available", "mmcv_cuda", "expected"), [
    (True, "not available", True),
    (True, "12.1", False),
    (False, "not available", False),
    (False, "12.1", False),
])
def test_needs_fallback(cuda_available: bool, mmcv_cuda: str, expected: bool) -> None:
    assert needs_fallback(cuda_available, mmcv_cuda) is expected


def test_import_routes_nothing_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert not isinstance(mmcv._ext.nms, RoutedKernel)
    assert not isinstance(mmcv._ext.roi_align_forward, RoutedKernel)


@pytest.mark.parametrize(("cuda_available", "mmcv_cuda", "routed"), [
    (True, "12.1", False),
    (False, "not available", False),
    (True, "not available", True),
])
def test_route_if_needed_routes_cuda_only_and_cpu_stays_on_mmcv(
        monkeypatch: pytest.MonkeyPatch, notices: list[tuple[str, int]],
        cuda_available: bool, mmcv_cuda: str, routed: bool) -> None:
    boxes, scores = random_boxes(200, seed=0)
    expected = mmcv.ops.nms(boxes, scores, 0.5)
    original = mmcv._ext.nms
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    monkeypatch.setattr(ops_fallback, "mmcv_cuda_version", lambda: mmcv_cuda)
    monkeypatch.setitem(ops_fallback.FALLBACKS, "nms", _must_not_run)
    try:
        assert ops_fallback.route_mmcv_ops_if_needed() is routed
        kernel = mmcv._ext.nms
        if routed:
            assert isinstance(kernel, RoutedKernel) and kernel.devices == {"cuda"}
            assert kernel.kernel is original
        else:
            assert kernel is original
        dets, keep = mmcv.ops.nms(boxes, scores, 0.5)  # CPU tensors: mmcv's kernel
    finally:
        unroute_mmcv_ops()
    assert torch.equal(dets, expected[0]) and torch.equal(keep, expected[1])
    assert notices == []
    assert mmcv._ext.nms is original


def test_route_is_idempotent_and_undone() -> None:
    originals = {name: getattr(mmcv._ext, name) for name in ("nms", "roi_align_forward",
                                                              "bbox_overlaps")}
    try:
        route_mmcv_ops(devices=("cuda",))
        route_mmcv_ops(devices=("cpu", "cuda"))
        for name, original in originals.items():
            routed = getattr(mmcv._ext, name)
            assert isinstance(routed, RoutedKernel)
            assert routed.kernel is original and routed.devices == {"cpu", "cuda"}
    finally:
        unroute_mmcv_ops()
    for name, original in originals.items():
        assert getattr(mmcv._ext, name) is original


def test_route_refuses_bad_devices() -> None:
    with pytest.raises(TypeError, match="collection of device types"):
        route_mmcv_ops(devices="cuda")
    with pytest.raises(ValueError, match="at least one device type"):
        route_mmcv_ops(devices=())
    assert not isinstance(mmcv._ext.nms, RoutedKernel)


# --- nms and batched_nms -------------------------------------------------------------------------

@pytest.mark.parametrize("iou_threshold", CONFIG_IOUS)
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize(("score_threshold", "max_num"), [(0.0, -1), (0.3, 50)])
def test_nms_equals_mmcv(iou_threshold: float, offset: int, score_threshold: float,
                         max_num: int, fallback_calls: Counter[str]) -> None:
    boxes, scores = random_boxes(600, seed=int(iou_threshold * 10) + offset)
    args = (boxes, scores, iou_threshold, offset, score_threshold, max_num)
    with unrouted():
        expected_dets, expected_keep = mmcv.ops.nms(*args)
    dets, keep = mmcv.ops.nms(*args)
    assert fallback_calls["nms"] == 1
    assert 0 < len(expected_keep) < len(boxes)  # boxes were suppressed, boxes were kept
    assert torch.equal(keep, expected_keep) and torch.equal(dets, expected_dets)


def test_nms_numpy_and_empty_inputs(fallback_calls: Counter[str]) -> None:
    boxes, scores = random_boxes(300, seed=3)
    with unrouted():
        expected_dets, expected_keep = mmcv.ops.nms(boxes.numpy(), scores.numpy(), 0.5)
    dets, keep = mmcv.ops.nms(boxes.numpy(), scores.numpy(), 0.5)
    assert isinstance(dets, np.ndarray)
    np.testing.assert_array_equal(keep, expected_keep)
    np.testing.assert_array_equal(dets, expected_dets)
    dets, keep = mmcv.ops.nms(boxes[:0], scores[:0], 0.5)
    assert dets.shape == (0, 5) and keep.shape == (0,) and keep.dtype == torch.int64
    assert fallback_calls["nms"] == 2


def test_fallback_nms_refuses_a_bad_offset() -> None:
    boxes, scores = random_boxes(5, seed=0)
    with pytest.raises(ValueError, match="offset must be 0 or 1"):
        ops_fallback.nms(boxes, scores, 0.5, offset=2)


@pytest.mark.parametrize("nms_cfg", [
    dict(type="nms", iou_threshold=0.5),  # RetinaNet and the R-CNN head (multiclass_nms)
    dict(type="nms", iou_threshold=0.7),  # the RPN
    dict(type="nms", iou_threshold=0.5, split_thr=100),  # one nms call per class
    dict(type="nms", iou_threshold=0.5, class_agnostic=True),
], ids=["iou0.5", "iou0.7", "split", "agnostic"])
def test_batched_nms_equals_mmcv(nms_cfg: dict[str, Any], fallback_calls: Counter[str]) -> None:
    boxes, scores = random_boxes(500, seed=7)
    classes = torch.randint(0, 12, (500,), generator=torch.Generator().manual_seed(8))
    with unrouted():
        expected_dets, expected_keep = mmcv.ops.batched_nms(boxes, scores, classes, nms_cfg)
    dets, keep = mmcv.ops.batched_nms(boxes, scores, classes, nms_cfg)
    assert fallback_calls["nms"] >= 1
    assert torch.equal(keep, expected_keep) and torch.equal(dets, expected_dets)


# --- RoIAlign ------------------------------------------------------------------------------------

def roi_inputs(spatial_scale: float, seed: int, dtype: torch.dtype = torch.float32,
               channels: int = 4, num_rois: int = 40) -> tuple[Tensor, Tensor]:
    """A ``Tensor[2, C, H, W]`` feature map of a 256x320 image at ``spatial_scale`` and RoIs in
    image coordinates, some of them crossing the image border and some thinner than a pixel."""
    g = torch.Generator().manual_seed(seed)
    height, width = round(256 * spatial_scale), round(320 * spatial_scale)
    features = torch.randn(2, channels, height, width, generator=g, dtype=dtype)
    xy = torch.rand(num_rois, 2, generator=g, dtype=dtype) * torch.tensor([340.0, 270.0]) - 10
    wh = torch.rand(num_rois, 2, generator=g, dtype=dtype) * 120 + 0.5
    batch = torch.randint(0, 2, (num_rois, 1), generator=g).to(dtype)
    return features, torch.cat([batch, xy, xy + wh], dim=1)


def _pool_and_grad(layer: nn.Module, features: Tensor, rois: Tensor,
                   weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    features = features.clone().requires_grad_()
    pooled = layer(features, rois)
    if weights is None:
        weights = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(pooled, features, weights)
    return pooled.detach(), grad


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [7, 14, (3, 5)])
@pytest.mark.parametrize("spatial_scale", [1 / 8, 1 / 16, 1 / 32])
def test_roi_align_equals_mmcv_forward_and_backward(
        aligned: bool, sampling_ratio: int, output_size: int | tuple[int, int],
        spatial_scale: float, fallback_calls: Counter[str]) -> None:
    layer = mmcv.ops.RoIAlign(output_size, spatial_scale, sampling_ratio, "avg", aligned)
    features, rois = roi_inputs(spatial_scale, seed=int(1 / spatial_scale) + sampling_ratio)
    with unrouted():
        expected_pooled, expected_grad = _pool_and_grad(layer, features, rois)
    pooled, grad = _pool_and_grad(layer, features, rois)
    assert fallback_calls["roi_align_forward"] == fallback_calls["roi_align_backward"] == 1
    assert expected_pooled.abs().sum() > 0 and expected_grad.abs().sum() > 0
    torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=0)  # same arithmetic
    # Both backward kernels add into the input gradient, in different orders.
    torch.testing.assert_close(grad, expected_grad)


def test_roi_align_fallback_gradcheck(fallback_calls: Counter[str]) -> None:
    features, rois = roi_inputs(1 / 8, seed=5, dtype=torch.float64, channels=2, num_rois=4)
    features.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: mmcv.ops.roi_align(x, rois, (3, 3), 1 / 8, 2, "avg", True), (features,))
    assert fallback_calls["roi_align_backward"] > 0


def test_roi_align_max_pool_has_no_fallback(fallback_calls: Counter[str]) -> None:
    features, rois = roi_inputs(1 / 8, seed=0)
    with pytest.raises(NotImplementedError, match="pool_mode='max'.*tools/setup_env.sh"):
        mmcv.ops.RoIAlign(7, 1 / 8, 2, "max", True)(features, rois)


# --- sigmoid focal loss (mmdet's FocalLoss on CUDA) ----------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 0.25), (0.0, 0.5), (1.5, 0.75)])
def test_sigmoid_focal_loss_equals_torchvision(dtype: torch.dtype, gamma: float, alpha: float,
                                               fallback_calls: Counter[str]) -> None:
    g = torch.Generator().manual_seed(int(gamma * 10))
    num_classes = 6
    logits = (torch.randn(50, num_classes, generator=g) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, num_classes + 1, (50,), generator=g)  # num_classes = background
    labels[:3] = num_classes
    weights = torch.rand(50, num_classes, generator=g, dtype=dtype)
    loss = mmcv.ops.sigmoid_focal_loss(logits, labels, gamma, alpha, None, "none")
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    one_hot = torch.nn.functional.one_hot(labels, num_classes + 1)[:, :num_classes].to(dtype)
    expected = torchvision.ops.sigmoid_focal_loss(logits, one_hot, alpha, gamma, "none")
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    assert fallback_calls["sigmoid_focal_loss_forward"] == 1
    assert fallback_calls["sigmoid_focal_loss_backward"] == 1
    assert loss.dtype == dtype
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_mmdet_cuda_focal_loss_path_equals_its_python_path(fallback_calls: Counter[str]) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(80, 12, generator=g).requires_grad_()
    labels = torch.randint(0, 13, (80,), generator=g)
    anchor_weight = torch.rand(80, generator=g)
    loss = mmdet_cuda_focal_loss(logits, labels, anchor_weight, avg_factor=17.0)
    one_hot = torch.nn.functional.one_hot(labels, 13)[:, :12]
    expected = py_sigmoid_focal_loss(logits, one_hot, anchor_weight, avg_factor=17.0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0],
                               torch.autograd.grad(expected, logits)[0])
    assert fallback_calls["sigmoid_focal_loss_backward"] == 1


def test_sigmoid_focal_loss_class_weight_has_no_fallback(fallback_calls: Counter[str]) -> None:
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    with pytest.raises(NotImplementedError, match="weight=.*tools/setup_env.sh"):
        mmcv.ops.sigmoid_focal_loss(logits, labels, 2.0, 0.25, torch.ones(3), "none")


# --- other ops, and the notice -------------------------------------------------------------------

def test_other_ops_run_or_fail_naming_the_op_and_the_fix(fallback_calls: Counter[str]) -> None:
    boxes, _ = random_boxes(30, seed=2)
    with unrouted():
        expected = mmcv.ops.bbox_overlaps(boxes, boxes)
    assert torch.equal(mmcv.ops.bbox_overlaps(boxes, boxes), expected)  # has a kernel: runs
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    # mmcv has no CPU softmax focal loss: here "cpu" plays a device without mmcv kernels.
    with pytest.raises(RuntimeError,
                       match="'softmax_focal_loss_forward'.*tools/setup_env.sh") as err:
        mmcv.ops.softmax_focal_loss(logits, labels, 2.0, 0.25, None, "none")
    assert "implementation for device cpu not found" in str(err.value.__cause__)
    assert "MMIMB_CUDA_TARGETS" in str(err.value)
    assert sum(fallback_calls.values()) == 0


def test_notice_is_logged_once(fallback_calls: Counter[str],
                               notices: list[tuple[str, int]]) -> None:
    boxes, scores = random_boxes(50, seed=1)
    features, rois = roi_inputs(1 / 8, seed=1)
    for _ in range(2):
        mmcv.ops.nms(boxes, scores, 0.5)
        mmcv.ops.RoIAlign(7, 1 / 8, 2)(features, rois)
    assert fallback_calls["nms"] == 2 and fallback_calls["roi_align_forward"] == 2
    assert len(notices) == 1
    message, level = notices[0]
    assert level == logging.WARNING
    assert "mmcv has no cpu kernels" in message and "first use: nms" in message
    assert "'not available'" in message and "tools/setup_env.sh" in message


# --- whole detectors -----------------------------------------------------------------------------

def build_detector(config: str, test_cfg: dict[str, Any]) -> nn.Module:
    """One of our tiny detectors (``configs/_base_/models``), seeded, with mmdet's init."""
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(REPO / "configs" / "_base_" / "models" / config)
    cfg.model.test_cfg.update(test_cfg)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def detector_batch(num_images: int = 2, height: int = 96, width: int = 128) -> dict[str, Any]:
    """Random images with a few ground-truth boxes of 12 classes, as mmdet's loaders give."""
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(num_images):
        inputs.append(torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8))
        sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             scale_factor=(1.0, 1.0)))
        xy = torch.rand(3, 2, generator=g) * torch.tensor([width - 40.0, height - 40.0])
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + 10 + 30 * torch.rand(3, 2, generator=g)], dim=1),
            labels=torch.randint(0, 12, (3,), generator=g))
        samples.append(sample)
    return {"inputs": inputs, "data_samples": samples}


def predict(model: nn.Module) -> list[tuple[Tensor, Tensor, Tensor]]:
    model.eval()
    with torch.no_grad():
        results = model.test_step(detector_batch())
    return [(r.pred_instances.bboxes, r.pred_instances.scores, r.pred_instances.labels)
            for r in results]


def loss_and_grads(model: nn.Module) -> tuple[Tensor, list[Tensor]]:
    model.train()
    torch.manual_seed(1)  # the RPN and R-CNN samplers draw with torch's global generator
    data = model.data_preprocessor(detector_batch(), True)
    loss, _ = model.parse_losses(model(**data, mode="loss"))
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), list(torch.autograd.grad(loss, params, allow_unused=True))


@pytest.mark.parametrize(("config", "test_cfg"), [
    # score_thr=0: the untrained head scores ~0.01, and every box should reach nms.
    ("retinanet_r18tiny_fpn.py", dict(score_thr=0.0)),
    ("faster-rcnn_r18tiny_fpn.py", dict()),
], ids=["retinanet", "faster-rcnn"])
def test_detector_predictions_are_unchanged_by_the_fallback(
        config: str, test_cfg: dict[str, Any], fallback_calls: Counter[str]) -> None:
    model = build_detector(config, test_cfg)
    with unrouted():
        expected = predict(model)
    routed = predict(model)
    assert fallback_calls["nms"] > 0
    if "rcnn" in config:
        assert fallback_calls["roi_align_forward"] > 0
    assert sum(len(labels) for _, _, labels in expected) > 0
    for (boxes, scores, labels), (exp_boxes, exp_scores, exp_labels) in zip(
            routed, expected, strict=True):
        assert torch.equal(labels, exp_labels)
        assert torch.equal(boxes, exp_boxes) and torch.equal(scores, exp_scores)


def test_faster_rcnn_training_gradients_are_unchanged_by_the_fallback(
        fallback_calls: Counter[str]) -> None:
    model = build_detector("faster-rcnn_r18tiny_fpn.py", {})
    with unrouted():
        expected_loss, expected_grads = loss_and_grads(model)
    loss, grads = loss_and_grads(model)
    assert fallback_calls["roi_align_backward"] > 0
    torch.testing.assert_close(loss, expected_loss)
    assert sum(g is not None for g in grads) > 0
    for grad, expected in zip(grads, expected_grads, strict=True):
        if expected is None:
            assert grad is None
        else:
            torch.testing.assert_close(grad, expected)
