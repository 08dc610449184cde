"""Run our detectors' mmcv ops on CUDA tensors when mmcv was built without CUDA kernels.

mmcv 2.1.0 can be installed with CPU kernels only (the prebuilt wheel in ``../shared/wheels`` is
such a build). Its ops then fail on CUDA tensors (``nms_impl: implementation for device cuda:0
not found``), so neither RetinaNet nor Faster R-CNN can predict or train on a GPU. When that is
the case, ``import mmimb`` calls :func:`route_mmcv_ops_if_needed`, which sends the kernels of
our configs to torchvision (it ships with torch and always has CUDA kernels):

- ``nms``, reached from ``mmcv.ops.nms`` and ``batched_nms`` (mmdet's ``multiclass_nms``, RPN
  and RetinaNet post-processing): :func:`nms`, torchvision's ``nms``.
- ``roi_align_forward`` and ``roi_align_backward``, reached from ``mmcv.ops.RoIAlign`` (mmdet's
  ``SingleRoIExtractor``), ``pool_mode='avg'`` only: :func:`roi_align` and
  :func:`roi_align_input_grad`, torchvision's ``roi_align`` and its autograd.
- ``sigmoid_focal_loss_forward`` and ``_backward``, reached from ``mmcv.ops.sigmoid_focal_loss``
  (mmdet's ``FocalLoss`` uses it on CUDA, in RetinaNet's training): mmimb's own
  :func:`mmimb.losses.functional.sigmoid_focal_loss` and its autograd.

Where the patch goes: every ``mmcv.ops`` file calls its kernels as ``ext_module.<kernel>(...)``,
looked up at call time on one module object, ``mmcv._ext``. We replace functions of that
module, not Python symbols such as ``mmcv.ops.nms``: mmdet binds ``batched_nms`` at import
(``from mmcv.ops import batched_nms``), mmcv's ``batched_nms`` finds ``nms`` with ``eval`` in its
own module, and mmdet's RoI extractor reads ``mmcv.ops.RoIAlign`` by name. All of these reach
``mmcv._ext``, so one patch there covers them, whatever was imported before ``mmimb``.

When: :func:`needs_fallback` is true when CUDA is available and
``mmcv.ops.get_compiling_cuda_version()`` returns ``'not available'``, the value mmcv's
``info.cpp`` gives when compiled without CUDA. Otherwise nothing is patched.

What the patch does: each public function of ``mmcv._ext`` becomes a :class:`RoutedKernel` that
looks at the devices of the tensors it is given.

- No CUDA tensor: mmcv's own kernel, called as before (CPU behaviour is unchanged).
- A CUDA tensor, one of the kernels above: the fallback. The first such call logs one notice
  (``print_log`` at ``WARNING``; once per process).
- A CUDA tensor, any other kernel: mmcv's kernel is still called (it would raise anyway without
  CUDA kernels), and a ``RuntimeError`` it raises comes back as a ``RuntimeError`` naming the
  kernel and how to build mmcv with CUDA kernels, with mmcv's error chained. Catching rather than
  refusing up front means no call that mmcv could serve is ever blocked.

The fallbacks equal mmcv's kernels, as ``tests/test_ops_fallback.py`` checks on CPU: bit for bit
for ``nms`` and the ``roi_align`` forward (same algorithm, same float32 arithmetic), to float
rounding for the ``roi_align`` gradient (both kernels accumulate it, in different orders), and
the same formula for the focal loss (computed in float32 at least, through
``binary_cross_entropy_with_logits`` rather than mmcv's ``log(max(p, FLT_MIN))``, so it stays
accurate for large logits). What the fallbacks cannot do raises ``NotImplementedError`` (a
``RuntimeError``) naming the setting: ``RoIAlign(pool_mode='max')`` and the per-class ``weight``
of ``mmcv.ops.sigmoid_focal_loss`` (mmdet passes neither).

Shape shorthand used below:
    N: boxes (``nms``) or rows of logits (focal loss)
    C: channels of a feature map (``roi_align``) or foreground classes (focal loss)
    K: RoIs; B, H, W: images, height and width of a feature map; PH, PW: pooled size
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import torch
import torchvision.ops
from mmengine.logging import print_log
from torch import Tensor

from mmimb.losses.functional import sigmoid_focal_loss

#: What ``mmcv.ops.get_compiling_cuda_version()`` returns for a build without CUDA kernels.
MMCV_WITHOUT_CUDA = "not available"

#: How to get the kernels the fallback does not cover; part of every error raised here.
BUILD_MMCV_WITH_CUDA = (
    "install an mmcv 2.1.0 built with CUDA kernels: run tools/setup_env.sh on this GPU machine "
    "(it builds one when torch sees a GPU), or build the wheel on another machine with "
    "MMIMB_CUDA_TARGETS=<compute capability, e.g. 9.0> bash tools/setup_env.sh and "
    "`pip install --force-reinstall --no-deps` the wheel it leaves in .cache/wheels/cuda/")


def needs_fallback(cuda_available: bool, mmcv_cuda: str) -> bool:
    """Whether CUDA tensors can exist but mmcv has no CUDA kernels for them.

    Args:
        cuda_available: ``torch.cuda.is_available()``.
        mmcv_cuda: ``mmcv.ops.get_compiling_cuda_version()``: the CUDA (or HIP) version mmcv was
            compiled with, or :data:`MMCV_WITHOUT_CUDA`.

    Returns:
        ``True`` only when both hold; without CUDA there is nothing to route.
    """
    return cuda_available and mmcv_cuda.strip() == MMCV_WITHOUT_CUDA


def mmcv_cuda_version() -> str:
    """``mmcv.ops.get_compiling_cuda_version()``, e.g. ``'12.1'`` or ``'not available'``."""
    from mmcv.ops import get_compiling_cuda_version

    return str(get_compiling_cuda_version())


# --- the fallbacks, as plain functions of tensors (any device) -----------------------------------

def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    """Greedy non-maximum suppression with mmcv's ``offset`` convention, by torchvision.

    mmcv measures a box as ``x2 - x1 + offset`` wide (``offset`` 0 or 1) in its areas and
    intersections; that is exactly a box widened by ``offset`` on the right and the bottom, which
    torchvision's ``nms`` (offset 0) is then given. A box is suppressed by a kept one when their
    IoU is strictly above ``iou_threshold``, in both libraries.

    Args:
        boxes: ``Tensor[N, 4]`` as ``(x1, y1, x2, y2)``.
        scores: ``Tensor[N]``.
        iou_threshold: IoU above which the lower-scored box is dropped.
        offset: 0 (mmdet's convention) or 1 (legacy pixel convention).

    Returns:
        ``int64 Tensor`` of the kept indices, by decreasing score (mmcv's ``ext_module.nms``).

    Raises:
        ValueError: when ``offset`` is not 0 or 1.
    """
    if offset not in (0, 1):
        raise ValueError(f"offset must be 0 or 1 (mmcv's box width convention), got {offset!r}")
    if offset:
        boxes = boxes + boxes.new_tensor([0.0, 0.0, offset, offset])
    return torchvision.ops.nms(boxes, scores, float(iou_threshold))


def roi_align(input: Tensor, rois: Tensor, output_size: Sequence[int], spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign with average pooling, by torchvision (same algorithm as mmcv's ``avg`` mode).

    Both libraries take ``sampling_ratio x sampling_ratio`` bilinear samples per bin, or
    ``ceil(roi_size / pooled_size)`` per side when ``sampling_ratio <= 0`` (adaptive); both
    shift the scaled box by -0.5 when ``aligned`` and clamp it to at least 1 pixel when not.

    Args:
        input: ``Tensor[B, C, H, W]`` feature map.
        rois: ``Tensor[K, 5]`` as ``(batch_index, x1, y1, x2, y2)`` in image coordinates, same
            dtype as ``input``.
        output_size: ``(PH, PW)``.
        spatial_scale: feature-map size over image size, e.g. 1/8 for stride 8.
        sampling_ratio: samples per bin side, ``<= 0`` for adaptive.
        aligned: half-pixel alignment of Detectron2 (``True``) or the legacy one.

    Returns:
        ``Tensor[K, C, PH, PW]``.
    """
    return torchvision.ops.roi_align(input, rois, list(output_size), float(spatial_scale),
                                     int(sampling_ratio), bool(aligned))


def roi_align_input_grad(grad_output: Tensor, rois: Tensor, input_shape: Sequence[int],
                         spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """Gradient of :func:`roi_align` with respect to its input feature map.

    RoIAlign is linear in its input (each output is a fixed bilinear mix of input values), so
    its input gradient is the same vector-Jacobian product at any input. We take it at zero
    through torchvision's autograd, so the backward kernel is torchvision's own.

    Args:
        grad_output: ``Tensor[K, C, PH, PW]`` gradient of the pooled RoIs.
        rois: ``Tensor[K, 5]`` as given to the forward.
        input_shape: ``(B, C, H, W)`` of the forward's input.
        spatial_scale: as in the forward.
        sampling_ratio: as in the forward.
        aligned: as in the forward.

    Returns:
        ``Tensor[B, C, H, W]``.
    """
    with torch.enable_grad():  # mmcv's backward runs under no_grad (once_differentiable)
        zeros = grad_output.new_zeros(tuple(input_shape), requires_grad=True)
        pooled = roi_align(zeros, rois, grad_output.shape[-2:], spatial_scale, sampling_ratio,
                           aligned)
        (grad_input,) = torch.autograd.grad(pooled, zeros, grad_output)
    return grad_input


# --- the same fallbacks behind the signatures of mmcv._ext ---------------------------------------

def _ext_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int) -> Tensor:
    return nms(boxes, scores, iou_threshold, offset)


def _check_avg_pool(pool_mode: int) -> None:
    if pool_mode != 1:  # mmcv's RoIAlignFunction: 0 = 'max', 1 = 'avg'
        raise NotImplementedError(
            "RoIAlign(pool_mode='max') has no fallback for devices without mmcv kernels: "
            "torchvision's roi_align averages only. Use pool_mode='avg' (mmdet's default), or "
            + BUILD_MMCV_WITH_CUDA)


def _ext_roi_align_forward(input: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor,
                           argmax_x: Tensor, aligned_height: int, aligned_width: int,
                           spatial_scale: float, sampling_ratio: int, pool_mode: int,
                           aligned: bool) -> None:
    _check_avg_pool(pool_mode)
    output.copy_(roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                           sampling_ratio, aligned))


def _ext_roi_align_backward(grad_output: Tensor, rois: Tensor, argmax_y: Tensor,
                            argmax_x: Tensor, grad_input: Tensor, aligned_height: int,
                            aligned_width: int, spatial_scale: float, sampling_ratio: int,
                            pool_mode: int, aligned: bool) -> None:
    _check_avg_pool(pool_mode)
    grad_input.copy_(roi_align_input_grad(grad_output, rois, grad_input.shape, spatial_scale,
                                          sampling_ratio, aligned))


def _check_no_class_weight(weight: Tensor) -> None:
    if weight.numel():
        raise NotImplementedError(
            "mmcv.ops.sigmoid_focal_loss(weight=...) has no fallback for devices without mmcv "
            "kernels (mmdet's FocalLoss never passes it; weight its result instead), or "
            + BUILD_MMCV_WITH_CUDA)


def _ext_sigmoid_focal_loss_forward(input: Tensor, target: Tensor, weight: Tensor,
                                    output: Tensor, gamma: float, alpha: float) -> None:
    _check_no_class_weight(weight)
    output.copy_(sigmoid_focal_loss(input, target, alpha=alpha, gamma=gamma))


def _ext_sigmoid_focal_loss_backward(input: Tensor, target: Tensor, weight: Tensor,
                                     grad_input: Tensor, gamma: float, alpha: float) -> None:
    # mmcv's kernel returns d loss[n, c] / d input[n, c]; each loss element depends on its own
    # logit only, so that is the gradient of the sum.
    _check_no_class_weight(weight)
    with torch.enable_grad():
        logits = input.detach().requires_grad_()
        loss = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma)
        (grad,) = torch.autograd.grad(loss.sum(), logits)
    grad_input.copy_(grad)


#: The kernels of ``mmcv._ext`` that have a fallback, by name, with mmcv's signatures.
FALLBACKS: dict[str, Callable[..., Any]] = {
    "nms": _ext_nms,
    "roi_align_forward": _ext_roi_align_forward,
    "roi_align_backward": _ext_roi_align_backward,
    "sigmoid_focal_loss_forward": _ext_sigmoid_focal_loss_forward,
    "sigmoid_focal_loss_backward": _ext_sigmoid_focal_loss_backward,
}

_notice_shown = False


def _notice_once(kernel: str, device: str) -> None:
    global _notice_shown
    if _notice_shown:
        return
    _notice_shown = True
    print_log(
        f"mmcv has no {device} kernels (mmcv.ops.get_compiling_cuda_version() = "
        f"{mmcv_cuda_version()!r}): mmimb runs {', '.join(FALLBACKS)} on {device} tensors with "
        f"torchvision / torch instead (first use: {kernel}). Any other mmcv op on {device} "
        f"tensors raises. To use mmcv's own kernels, {BUILD_MMCV_WITH_CUDA}. "
        "(This notice is shown once.)",
        logger="current", level=logging.WARNING)


def _routed_device(args: tuple[Any, ...], kwargs: dict[str, Any],
                   devices: frozenset[str]) -> str | None:
    """The first device type among the tensor arguments that is in ``devices``, else ``None``."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and value.device.type in devices:
            return value.device.type
    return None


class RoutedKernel:
    """A function of ``mmcv._ext`` that serves calls on ``devices`` without mmcv's kernels.

    Args:
        name: the kernel's name in ``mmcv._ext``.
        kernel: mmcv's compiled function.
        fallback: the replacement with the same signature, or ``None`` to only explain failures.
        devices: device types (``tensor.device.type``) that mmcv has no kernels for.
    """

    def __init__(self, name: str, kernel: Callable[..., Any],
                 fallback: Callable[..., Any] | None, devices: frozenset[str]) -> None:
        self.name = name
        self.kernel = kernel
        self.fallback = fallback
        self.devices = devices
        self.__doc__ = getattr(kernel, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        device = _routed_device(args, kwargs, self.devices)
        if device is None:
            return self.kernel(*args, **kwargs)
        if self.fallback is not None:
            _notice_once(self.name, device)
            return self.fallback(*args, **kwargs)
        try:
            return self.kernel(*args, **kwargs)
        except RuntimeError as err:
            raise RuntimeError(
                f"mmcv op {self.name!r} failed on a {device} tensor: this mmcv has no {device} "
                f"kernels (mmcv.ops.get_compiling_cuda_version() = {mmcv_cuda_version()!r}) and "
                f"mmimb's torchvision fallback covers only {', '.join(FALLBACKS)}. To run "
                f"{self.name!r}, {BUILD_MMCV_WITH_CUDA}.") from err

    def __repr__(self) -> str:
        return (f"RoutedKernel({self.name!r}, devices={sorted(self.devices)}, "
                f"fallback={'yes' if self.fallback else 'no'})")


def _mmcv_ext(ext: ModuleType | None) -> ModuleType:
    if ext is not None:
        return ext
    import mmcv._ext

    return mmcv._ext


def route_mmcv_ops(ext: ModuleType | None = None, devices: Iterable[str] = ("cuda",)) -> None:
    """Wrap every public function of ``mmcv._ext`` in a :class:`RoutedKernel` (idempotent).

    Calling it again re-routes with the new ``devices``; :func:`unroute_mmcv_ops` undoes it.
    ``devices=('cpu',)`` routes CPU tensors too, which lets the tests run the CUDA path on CPU.

    Args:
        ext: the module to patch; ``None`` for ``mmcv._ext``.
        devices: device types without mmcv kernels.

    Raises:
        TypeError: when ``devices`` is a single string.
        ValueError: when ``devices`` is empty.
    """
    if isinstance(devices, str):
        raise TypeError(f"devices must be a collection of device types such as ('cuda',), "
                        f"got the string {devices!r}")
    device_set = frozenset(devices)
    if not device_set:
        raise ValueError("devices must name at least one device type, such as ('cuda',)")
    module = _mmcv_ext(ext)
    unroute_mmcv_ops(module)
    for name in dir(module):
        function = getattr(module, name)
        if not name.startswith("_") and callable(function):
            setattr(module, name, RoutedKernel(name, function, FALLBACKS.get(name), device_set))


def unroute_mmcv_ops(ext: ModuleType | None = None) -> None:
    """Put mmcv's own functions back where :func:`route_mmcv_ops` wrapped them."""
    module = _mmcv_ext(ext)
    for name in dir(module):
        function = getattr(module, name)
        if isinstance(function, RoutedKernel):
            setattr(module, name, function.kernel)


def route_mmcv_ops_if_needed() -> bool:
    """Route CUDA tensors to the fallbacks when :func:`needs_fallback` says so.

    Called by ``import mmimb``.

    Returns:
        Whether ``mmcv._ext`` was patched.
    """
    if not needs_fallback(torch.cuda.is_available(), mmcv_cuda_version()):
        return False
    route_mmcv_ops(devices=("cuda",))
    return True
