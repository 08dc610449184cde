"""Initialise a sigmoid classifier's bias from the training set's class frequencies.

RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) starts every class
with the same prior probability ``pi = 0.01``, the bias ``b = -log((1 - pi) / pi)``, so that
the many background anchors do not swamp the first iterations. With a long-tailed training set
the classes are not equally likely; this hook gives each class its own prior::

    pi_c = mean_prior * n_c / mean(n),   clipped to [eps, 1 - eps]
    b_c  = -log((1 - pi_c) / pi_c)

Frequency definition. The quantity a sigmoid classifier's bias encodes is the fraction of
anchors positive for class ``c``, which depends on the anchor assigner and the box sizes and is
unknown before training. It is proportional to the number of boxes of the class (every box
yields positive anchors), so ``n_c`` are the training set's *instance* counts, and the unknown
factor is fixed by keeping RetinaNet's prior on average: ``mean_c(pi_c) = mean_prior``. The
total prior foreground mass ``sum_c pi_c`` is then RetinaNet's, and so is the background loss
at the first iteration to first order; with equal counts every ``b_c`` is RetinaNet's.
A class with more than ``1 / mean_prior`` times the mean count would get ``pi_c >= 1``; it is
clipped to ``1 - eps`` with a warning (lower ``mean_prior`` to avoid it).

Switched on in one config line, beside a sigmoid dense head (RetinaNet, FCOS, ATSS ...)::

    custom_hooks = [dict(type='PriorBiasHook')]

When. ``before_train``, which mmengine calls after it initialised the weights (the head's own
constant prior) and loaded any checkpoint. The counts come from :func:`mmimb.stats.class_stats`
of ``runner.train_dataloader.dataset``, the call :class:`~mmimb.hooks.ClassStatsHook` makes
(re-sampling wrappers are looked through; its label cache serves the second read). A
checkpoint (``resume`` or ``load_from``) that holds a classifier bias of the same shape keeps
it: the bias was initialised in the run that wrote it, and trained since. A checkpoint without
it, or with another shape (fine-tuning on other classes: mmengine keeps the model's own bias),
gets the class priors.

Shape shorthand used below:
    C: number of classes
    A: number of anchors per position (``num_base_priors``); the classifier's bias has ``A * C``
       entries, anchor after anchor (mmdet's layout)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from mmimb.losses.base import _check_real
from mmimb.stats import class_stats, validate_counts

if TYPE_CHECKING:
    from mmengine.runner import Runner

#: RetinaNet's prior probability of every class.
RETINANET_PRIOR = 0.01
#: The classification layers of mmdet's sigmoid dense heads, tried in this order.
CLS_LAYERS: tuple[str, ...] = ("retina_cls", "conv_cls", "atss_cls", "gfl_cls", "tood_cls",
                               "vfnet_cls")


def _check_open_unit(value: Any, name: str, high: float = 1.0) -> float:
    value = _check_real(value, name)
    if not 0 < value < high:
        raise ValueError(f"{name} must lie in (0, {high:g}), got {value!r}")
    return value


def class_priors(counts: Sequence[float] | np.ndarray, mean_prior: float = RETINANET_PRIOR,
                 eps: float = 1e-6, classes: Sequence[str] = ()) -> np.ndarray:
    """Prior probability of every class: ``mean_prior * n_c / mean(n)``, clipped to
    ``[eps, 1 - eps]``.

    Args:
        counts: ``[C]`` training instances per class.
        mean_prior: mean of the priors, in ``(0, 1)``; RetinaNet's constant prior by default.
        eps: clipping margin, in ``(0, 0.5)``.
        classes: class names, for the messages.

    Returns:
        ``float64[C]`` priors ``pi_c``.

    Raises:
        ValueError: if a class has no training instance (its prior would be 0 and its bias
            ``-inf``), naming them; on bad counts, ``mean_prior`` or ``eps``.
    """
    mean_prior = _check_open_unit(mean_prior, "mean_prior")
    eps = _check_open_unit(eps, "eps", 0.5)
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {arr.shape}")
    arr = validate_counts(arr, len(arr), "counts")
    names = list(classes) if len(classes) == len(arr) else list(range(len(arr)))
    empty = np.flatnonzero(arr == 0)
    if empty.size:
        raise ValueError(
            f"classes {[names[i] for i in empty]} have no training instance: their prior "
            "would be 0 and their bias -inf. Remove them from the class list, add examples, "
            "or drop PriorBiasHook to keep the head's constant prior")
    priors = mean_prior * arr / arr.mean()
    high = np.flatnonzero(priors >= 1 - eps)
    if high.size:
        warnings.warn(
            f"classes {[names[i] for i in high]} have more than 1/mean_prior = "
            f"{1 / mean_prior:g} times the mean count: their priors {priors[high].tolist()} "
            f"are clipped to 1 - eps = {1 - eps}; lower mean_prior", stacklevel=2)
    return np.clip(priors, eps, 1 - eps)


def prior_bias(priors: np.ndarray) -> np.ndarray:
    """``b_c = -log((1 - pi_c) / pi_c)``, the logit whose sigmoid is ``pi_c``."""
    return np.log(priors) - np.log1p(-priors)


@HOOKS.register_module()
class PriorBiasHook(Hook):
    """Set a sigmoid dense head's classifier bias from the training set's class frequencies.

    See the module's docstring for the formula, the frequency definition and when the bias is
    set (not over a bias restored from a checkpoint).

    Args:
        mean_prior: mean prior probability ``mean_c(pi_c)``, in ``(0, 1)``.
        eps: the priors are clipped to ``[eps, 1 - eps]``, ``eps`` in ``(0, 0.5)``.
        head: dotted name of the head in the (unwrapped) model.
        cls_layer: name of the head's classification conv, or ``None`` for the first of
            :data:`CLS_LAYERS` the head has.

    Raises:
        ValueError: on a bad argument; in ``before_train`` (even when the bias is kept), if the
            model has no such head or layer, the head's classifier is not a sigmoid one
            (``use_sigmoid=False`` in its ``loss_cls``), its number of classes differs from the
            training set's, or a class has no training instance.
    """

    priority = "NORMAL"

    def __init__(self, mean_prior: float = RETINANET_PRIOR, eps: float = 1e-6,
                 head: str = "bbox_head", cls_layer: str | None = None) -> None:
        self.mean_prior = _check_open_unit(mean_prior, "mean_prior")
        self.eps = _check_open_unit(eps, "eps", 0.5)
        if not isinstance(head, str) or not head:
            raise TypeError(f"head must be a module name such as 'bbox_head', got {head!r}")
        if cls_layer is not None and (not isinstance(cls_layer, str) or not cls_layer):
            raise TypeError(f"cls_layer must be a layer name or None, got {cls_layer!r}")
        self.head = head
        self.cls_layer = cls_layer
        #: Shapes of the checkpoint's tensors, by name, once one was loaded.
        self._loaded: dict[str, tuple[int, ...]] | None = None

    def classifier(self, model: nn.Module) -> tuple[str, Tensor, int]:
        """The dotted name of the classification layer, its bias (``Tensor[A * C]``), and ``C``.

        Raises:
            ValueError: if there is no such head or layer, or the head is not sigmoid.
        """
        module: Any = model.module if is_model_wrapper(model) else model
        try:
            head: Any = module.get_submodule(self.head)
        except AttributeError:
            children = [name for name, _ in module.named_children()]
            raise ValueError(
                f"PriorBiasHook: {type(module).__name__} has no module {self.head!r} (its "
                f"children: {children}); set head= to the dense head's name") from None
        if not hasattr(head, "use_sigmoid_cls"):
            raise ValueError(
                f"PriorBiasHook: {self.head} is a {type(head).__name__}, not a dense head "
                "with a sigmoid classifier (RetinaHead, FCOSHead, ATSSHead ...). For a "
                "two-stage detector's RoI head there is no anchor prior to set")
        if not head.use_sigmoid_cls:
            raise ValueError(
                f"PriorBiasHook: {self.head} ({type(head).__name__}) has a softmax classifier "
                "(use_sigmoid=False in its loss_cls): the prior bias -log((1 - pi) / pi) is "
                "defined for sigmoid classifiers. Use a sigmoid loss or drop the hook")
        names = [self.cls_layer] if self.cls_layer else list(CLS_LAYERS)
        name = next((n for n in names if isinstance(getattr(head, n, None), nn.Conv2d)), None)
        if name is None:
            convs = [n for n, m in head.named_modules() if isinstance(m, nn.Conv2d)]
            raise ValueError(
                f"PriorBiasHook: {self.head} ({type(head).__name__}) has no Conv2d named "
                f"{' or '.join(names)}; set cls_layer= to one of its convs {convs}")
        layer: nn.Conv2d = getattr(head, name)
        num_classes = int(head.num_classes)
        if layer.bias is None or layer.bias.numel() % num_classes:
            raise ValueError(
                f"PriorBiasHook: {self.head}.{name} has "
                f"{'no bias' if layer.bias is None else f'{layer.bias.numel()} outputs'}, "
                f"not a multiple of num_classes={num_classes}: it is not the classifier")
        return f"{self.head}.{name}", layer.bias, num_classes

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict[str, Any]) -> None:
        """Remember which tensors the checkpoint holds (the bias may be among them)."""
        state = checkpoint.get("state_dict", checkpoint)
        self._loaded = {k.removeprefix("module."): tuple(v.shape)
                        for k, v in state.items() if isinstance(v, Tensor)}

    def before_train(self, runner: Runner) -> None:
        """Check the head; set its bias to the class priors unless a checkpoint restored it."""
        name, bias, num_classes = self.classifier(runner.model)
        if self._loaded is not None and self._loaded.get(f"{name}.bias") == tuple(bias.shape):
            runner.logger.info(f"PriorBiasHook: keeping {name}.bias from the checkpoint")
            return
        stats = class_stats(runner.train_dataloader.dataset)
        counts = stats.instance_counts
        if len(counts) != num_classes:
            raise ValueError(
                f"PriorBiasHook: the training set has {len(counts)} classes but {self.head} "
                f"has num_classes={num_classes}")
        values = prior_bias(class_priors(counts, self.mean_prior, self.eps, stats.classes))
        with torch.no_grad():
            bias.copy_(torch.as_tensor(values, dtype=bias.dtype).repeat(
                bias.numel() // num_classes))
        runner.logger.info(
            f"PriorBiasHook: {name}.bias set from {num_classes} class priors (mean "
            f"{self.mean_prior:g}): bias in [{values.min():.3f}, {values.max():.3f}]")
