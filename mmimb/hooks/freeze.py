"""Freeze every parameter of the model except those named by patterns: decoupled classifier
re-training (cRT; Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020).

Switched on in one config line (stage 2 of decoupled training, which also sets ``load_from``)::

    custom_hooks = [dict(type='FreezeExceptHook', trainable=['roi_head.bbox_head.fc_cls'])]

Patterns. A pattern names a parameter or a module by its dotted name in the model
(``model.named_parameters()``), with shell wildcards (``fnmatch``; ``*`` also matches dots). A
parameter is trainable when its own name or the name of any module containing it matches one
pattern: ``roi_head.bbox_head.fc_cls`` trains ``fc_cls.weight`` and ``fc_cls.bias``;
``*.fc_cls`` does too; ``roi_head.bbox_head`` trains the whole RoI head.
"""

from __future__ import annotations

import difflib
import os.path as osp
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from mmengine.runner import Runner

#: The default trainable part: the classification layer of a two-stage detector's RoI head.
DEFAULT_TRAINABLE: tuple[str, ...] = ("roi_head.bbox_head.fc_cls",)


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """Return ``patterns`` as a tuple if it is a non-empty sequence of non-empty strings.

    Raises:
        TypeError: if it is a single string or holds anything but strings.
        ValueError: if it is empty or holds an empty string.
    """
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise TypeError(f"trainable must be a list of name patterns, got {patterns!r}")
    if not patterns:
        raise ValueError("trainable must name at least one parameter or module pattern, got []")
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ValueError(f"trainable patterns must be non-empty strings, got {p!r}")
    return tuple(patterns)


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` (dotted) or one of the modules containing it matches a pattern."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatchcase(prefix, p) for prefix in prefixes for p in patterns)


def _module_names(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters of their own, in model order."""
    names = [name.rpartition(".")[0] for name, _ in model.named_parameters()]
    return list(dict.fromkeys(n for n in names if n))


def split_parameters(model: nn.Module, patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names of the trainable and of the frozen parameters of ``model``.

    Raises:
        ValueError: if a pattern matches no parameter (listing the closest and all module
            names), or the patterns match every parameter (nothing would be frozen).
    """
    patterns = check_patterns(patterns)
    names = [name for name, _ in model.named_parameters()]
    for p in patterns:
        if not any(matches(n, [p]) for n in names):
            modules = _module_names(model)
            close = difflib.get_close_matches(p, modules + names, n=5, cutoff=0.5)
            raise ValueError(
                f"trainable pattern {p!r} matches no parameter of {type(model).__name__}. "
                f"Closest names: {close}. Modules with parameters ({len(modules)}): "
                f"{', '.join(modules)}")
    trainable = [n for n in names if matches(n, patterns)]
    frozen = [n for n in names if not matches(n, patterns)]
    if not frozen:
        raise ValueError(f"trainable patterns {list(patterns)} match all {len(names)} parameters "
                         f"of {type(model).__name__}: nothing would be frozen (train without "
                         "FreezeExceptHook, or name a smaller part)")
    return trainable, frozen


def frozen_norm_layers(model: nn.Module, patterns: Sequence[str]) -> list[nn.Module]:
    """The normalisation layers with running statistics whose module is not trainable.

    A layer is trainable when its module name, or the name of one of its parameters, matches.
    """
    frozen: list[nn.Module] = []
    for name, module in model.named_modules():
        if not isinstance(module, _NormBase) or not module.track_running_stats:
            continue
        if matches(name, patterns) or any(matches(f"{name}.{p}", patterns)
                                          for p, _ in module.named_parameters(recurse=False)):
            continue
        frozen.append(module)
    return frozen


def freeze_except(model: nn.Module, patterns: Sequence[str]) -> tuple[list[str], list[nn.Module]]:
    """Set ``requires_grad=False`` on every parameter not matched by ``patterns`` (True on the
    matched ones) and put the frozen normalisation layers in eval mode.

    Returns:
        The trainable parameter names and the frozen normalisation layers (to keep in eval mode:
        mmengine's loops call ``model.train()`` before every training iteration).

    Raises:
        ValueError: see :func:`split_parameters`.
    """
    trainable, _ = split_parameters(model, patterns)
    keep = set(trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
    norms = frozen_norm_layers(model, patterns)
    for module in norms:
        module.eval()
    return trainable, norms


@HOOKS.register_module()
class FreezeExceptHook(Hook):
    """Train only the parameters that match ``trainable``; freeze the rest, BN statistics too.

    - ``before_run``: with ``require_checkpoint`` (the default), refuses a run that starts from
      random weights: decoupled re-training needs the stage-1 weights (``load_from``) or a
      stage-2 checkpoint to resume. A ``load_from`` file that does not exist is refused here,
      before anything is built.
    - ``before_train`` (after the checkpoint is loaded): sets ``requires_grad`` (see
      :func:`freeze_except`) and logs what trains. A frozen parameter gets no gradient, so no
      optimizer changes it (weight decay included: torch's optimizers skip parameters without
      a gradient). The patterns are checked against the model here: a pattern that matches no
      parameter, or patterns that match all of them, raise ``ValueError``.
    - ``before_train_iter``: puts the frozen normalisation layers (BatchNorm and others with
      running statistics, whose module is not trainable) back in eval mode, after the loop's
      ``model.train()``: their running mean and variance stay those of the checkpoint and the
      forward pass normalises with them.

    Distributed training: the hook freezes after mmengine wrapped the model in
    ``DistributedDataParallel``, which then waits for gradients of the frozen parameters unless
    ``model_wrapper_cfg=dict(type='MMDistributedDataParallel', find_unused_parameters=True)``;
    without that setting the hook raises ``ValueError`` in ``before_train``.

    Args:
        trainable: name patterns of the parameters to train (see the module docstring).
        require_checkpoint: refuse to start from random weights.

    Raises:
        TypeError, ValueError: on invalid patterns (at construction).
    """

    priority = "VERY_HIGH"

    def __init__(self, trainable: Sequence[str] = DEFAULT_TRAINABLE,
                 require_checkpoint: bool = True) -> None:
        self.trainable = check_patterns(trainable)
        if not isinstance(require_checkpoint, bool):
            raise TypeError(f"require_checkpoint must be True or False, got "
                            f"{require_checkpoint!r}")
        self.require_checkpoint = require_checkpoint
        self._frozen_norms: list[nn.Module] = []

    def before_run(self, runner: Runner) -> None:
        if not self.require_checkpoint or runner.cfg.get("resume"):
            return
        load_from = runner.cfg.get("load_from")
        if not load_from:
            raise ValueError("FreezeExceptHook retrains part of a trained model, but the config "
                             "has no load_from: set load_from to the stage-1 checkpoint (or "
                             "require_checkpoint=False to freeze random weights)")
        if "://" not in str(load_from) and not osp.isfile(load_from):
            raise FileNotFoundError(f"FreezeExceptHook: the stage-1 checkpoint load_from="
                                    f"{load_from!r} does not exist: train stage 1 first")

    def before_train(self, runner: Runner) -> None:
        model = runner.model
        if isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
            raise ValueError("FreezeExceptHook freezes parameters after DistributedDataParallel "
                             "was built: set model_wrapper_cfg=dict(type="
                             "'MMDistributedDataParallel', find_unused_parameters=True)")
        if is_model_wrapper(model):
            model = model.module
        trainable, self._frozen_norms = freeze_except(model, self.trainable)
        params = dict(model.named_parameters())
        count = sum(params[n].numel() for n in trainable)
        total = sum(p.numel() for p in params.values())
        runner.logger.info(
            f"FreezeExceptHook: training {len(trainable)} of {len(params)} parameter tensors "
            f"({count:,} of {total:,} values): {trainable}; {len(self._frozen_norms)} "
            "normalisation layers frozen in eval mode")

    def before_train_iter(self, runner: Runner, batch_idx: int,
                          data_batch: Any = None) -> None:
        for module in self._frozen_norms:
            module.eval()
