"""Checks of a run's whole setup that no single component can make, in one hook.

Each component validates its own arguments when it is built. Some mistakes only show when the
parts are put together, and pass silently today; :class:`SetupCheckHook` looks at the assembled
runner once:

- ``before_train``: warns (once each) about

  - a :class:`~mmimb.datasets.RepeatFactorDataset` with ``rounding='stochastic'`` and no
    :class:`~mmimb.datasets.DatasetEpochHook`: its table is drawn for epoch 0 and never
    redrawn, so every epoch repeats the same images;
  - re-sampling stacked on re-sampling: a re-sampling sampler (mmimb's samplers, mmdet's
    ``ClassAwareSampler``) over a re-sampling wrapper (``RepeatFactorDataset``, mmengine's
    ``ClassBalancedDataset``), or one such wrapper inside another. The repeats multiply
    (a rare image repeated 3 times by each is drawn about 9 times).

- ``before_train`` and ``before_test``: asks every metric of the val (test) evaluator that
  can (``check_setup``, e.g. :class:`~mmimb.evaluation.LongTailMetric`) to validate its
  training counts against the evaluated classes, so that a mistyped ``train_ann_file``, a
  training file of other classes, ``class_counts`` of the wrong length, or
  ``class_counts='auto'`` with no :class:`~mmimb.hooks.ClassStatsHook` fail in seconds, not
  after training and a full evaluation.

- ``after_load_checkpoint``, with ``strict_checkpoint=True`` (``tools/test.py`` and
  ``tools/train.py --resume`` set it): refuses a checkpoint whose tensors differ in shape from
  the model's, naming the parameter, both shapes and the likely cause. mmengine loads such a
  checkpoint with a warning and keeps the model's random weights for those tensors, so a
  classifier trained for other classes would be evaluated as a random one. Fine-tuning
  (``load_from`` with a new ``num_classes``) changes shapes on purpose: the default
  ``strict_checkpoint=False`` lets it through.

The tools register the hook themselves (:func:`mmimb.tool_utils.build_runner`); mmimb's base
runtime config lists it in ``default_hooks``, so runs started with mmdet's own tools get the
warnings too. Elsewhere::

    custom_hooks = [dict(type='SetupCheckHook')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mmdet.datasets.samplers import ClassAwareSampler
from mmdet.registry import HOOKS
from mmengine.dataset import ClassBalancedDataset
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from mmimb.datasets.wrappers import DatasetEpochHook, RepeatFactorDataset, walk_datasets
from mmimb.samplers import ResamplingSampler

if TYPE_CHECKING:
    from mmengine.runner import Runner

#: Wrappers that repeat images by class, and samplers that draw images by class.
RESAMPLING_WRAPPERS: tuple[type, ...] = (RepeatFactorDataset, ClassBalancedDataset)
RESAMPLING_SAMPLERS: tuple[type, ...] = (ResamplingSampler, ClassAwareSampler)

#: A shape mismatch as ``(name, shape in the checkpoint, shape in the model)``.
Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]


def loader_sampler(loader: Any) -> Any:
    """The sampler that orders a data loader's images (under its batch sampler, if any).

    mmengine builds a ``DataLoader`` with a ``batch_sampler`` (mmdet's
    ``AspectRatioBatchSampler``) and no ``sampler``; the configured sampler is then the batch
    sampler's ``sampler``, and ``loader.sampler`` is torch's default ``SequentialSampler``.
    """
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    return loader.sampler if sampler is None else sampler


def _epoch_draws(sampler: Any) -> int:
    """Images an epoch of ``sampler`` draws, over all ranks when the sampler says so."""
    indices = getattr(sampler, "epoch_indices", None)
    return len(indices()) if callable(indices) else len(sampler)


def _chain(outer: Any, inner: Any) -> str:
    """``N images -> L slots -> M`` for a sampler or wrapper ``outer`` over a wrapper ``inner``."""
    is_wrapper = isinstance(outer, RESAMPLING_WRAPPERS)
    last = f"{len(outer)} slots" if is_wrapper else f"{_epoch_draws(outer)} draws per epoch"
    return f"{len(inner.dataset)} images -> {len(inner)} slots -> {last}"


def stacked_resampling_warnings(dataset: Any, sampler: Any = None) -> list[str]:
    """One warning for every re-sampling stage above another (see the module docstring).

    Args:
        dataset: the training data loader's dataset.
        sampler: its sampler (:func:`loader_sampler`), or ``None``.

    Returns:
        Messages naming both stages, the growth of the epoch and what to keep.
    """
    top = sampler if isinstance(sampler, RESAMPLING_SAMPLERS) else None
    messages = []
    for node, above in walk_datasets(dataset):
        if not isinstance(node, RESAMPLING_WRAPPERS):
            continue
        outer = next((w for w in reversed(above) if isinstance(w, RESAMPLING_WRAPPERS)), top)
        if outer is None:
            continue
        keep = ("a DefaultSampler over the wrapper, or the sampler over the unwrapped dataset"
                if outer is sampler else "one wrapper over the unwrapped dataset")
        messages.append(
            f"train_dataloader: the {'sampler' if outer is sampler else 'wrapper'} "
            f"{type(outer).__name__} re-samples {type(node).__name__}, which re-samples its "
            f"images already: the repeats multiply ({_chain(outer, node)}). Keep one of the "
            f"two ({keep})")
    return messages


def missing_epoch_hook_warnings(dataset: Any, hooks: Iterable[Any]) -> list[str]:
    """A warning when a wrapper redraws per epoch but no hook hands it the epoch.

    Args:
        dataset: the training data loader's dataset.
        hooks: the runner's hooks.

    Returns:
        One message naming the wrapper and the hook to add (one for all such wrappers), or
        nothing.
    """
    redrawing = [node for node, _ in walk_datasets(dataset)
                 if isinstance(node, RepeatFactorDataset) and node.rounding == "stochastic"]
    if not redrawing or any(isinstance(h, DatasetEpochHook) for h in hooks):
        return []
    return ["train_dataloader: RepeatFactorDataset(rounding='stochastic') draws a new table of "
            "repeated images when set_epoch is called, but no DatasetEpochHook calls it: every "
            "epoch would repeat epoch 0's draw. Add custom_hooks=[dict(type='DatasetEpochHook')] "
            "(or use rounding='ceil' for a fixed table)"]


def training_setup_warnings(loader: Any, hooks: Iterable[Any]) -> list[str]:
    """Every warning of :class:`SetupCheckHook` about a training data loader.

    Args:
        loader: the training data loader (built).
        hooks: the runner's hooks.

    Returns:
        The messages, in a fixed order; empty when the setup is consistent.
    """
    return (missing_epoch_hook_warnings(loader.dataset, hooks)
            + stacked_resampling_warnings(loader.dataset, loader_sampler(loader)))


def shape_mismatches(model: nn.Module, state_dict: Mapping[str, Any]) -> list[Mismatch]:
    """Tensors of ``state_dict`` whose shape differs from the model's tensor of that name.

    Names are compared as mmengine loads them: a leading ``module.`` (a checkpoint saved from
    a ``DistributedDataParallel`` model) is dropped; names only one side has are not reported,
    nor are empty tensors of the model: placeholders that a module sizes when it loads them
    (the gradient statistics of :class:`~mmimb.losses.EqualizedFocalLoss` before the first
    iteration).

    Args:
        model: the model (a model wrapper is looked through).
        state_dict: the checkpoint's ``state_dict``.

    Returns:
        ``(name, checkpoint shape, model shape)`` in the model's order.
    """
    module: Any = model.module if is_model_wrapper(model) else model
    saved = {name.removeprefix("module."): tuple(value.shape)
             for name, value in state_dict.items() if hasattr(value, "shape")}
    return [(name, saved[name], tuple(value.shape))
            for name, value in module.state_dict().items()
            if name in saved and saved[name] != tuple(value.shape) and value.numel() > 0]


def _config_num_classes(model_cfg: Any) -> list[int]:
    """Every ``num_classes`` set in a model config, in order of appearance."""
    found: list[int] = []
    stack = [model_cfg]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if isinstance(node.get("num_classes"), int):
                found.append(node["num_classes"])
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list | tuple):
            stack.extend(reversed(node))
    return found


def mismatch_message(mismatches: Sequence[Mismatch], checkpoint: Mapping[str, Any],
                     model_cfg: Any = None, filename: str | None = None) -> str:
    """The error for a checkpoint that does not fit the model: what differs, and why.

    Args:
        mismatches: from :func:`shape_mismatches` (not empty).
        checkpoint: the loaded checkpoint (its ``meta.dataset_meta.classes`` name the classes
            it was trained on).
        model_cfg: the config's ``model``, for its ``num_classes``.
        filename: the checkpoint's path.
    """
    name, saved, current = mismatches[0]
    more = f" (and {len(mismatches) - 1} more tensor(s))" if len(mismatches) > 1 else ""
    meta = checkpoint.get("meta") or {}
    classes = (meta.get("dataset_meta") or {}).get("classes")
    num_classes = sorted(set(_config_num_classes(model_cfg)))
    if classes is not None and num_classes and num_classes != [len(classes)]:
        cause = (f"the checkpoint was trained on {len(classes)} classes "
                 f"({', '.join(map(str, list(classes)[:5]))}{' ...' if len(classes) > 5 else ''})"
                 f" but the config's model has num_classes={num_classes[0]}")
    else:
        cause = ("the config's model is not the one the checkpoint was trained with: most often "
                 "num_classes, or use_sigmoid of the classification loss (a softmax "
                 "classifier has num_classes + 1 outputs), or the channels of a layer")
    checkpoint_name = f"checkpoint {filename}" if filename else "the checkpoint"
    return (f"{checkpoint_name} does not fit the config's model: {name} has shape "
            f"{list(saved)} in the checkpoint and {list(current)} in the model{more}. Likely "
            f"cause: {cause}. Use the config the checkpoint was trained with (mmengine would "
            "load the other weights and keep random ones for these tensors)")


def check_evaluator(loop: Any, hooks: Iterable[Any], name: str) -> None:
    """Run ``check_setup`` of every metric of ``loop``'s evaluator that has one.

    Args:
        loop: a built val or test loop (``None`` when the run has none).
        hooks: the runner's hooks.
        name: the evaluator's config key, for messages (``'val_evaluator'``).

    Raises:
        ValueError: the metric's error, prefixed with the config key and the metric's type.
    """
    evaluator = getattr(loop, "evaluator", None)
    metrics = [m for m in getattr(evaluator, "metrics", []) if callable(getattr(m, "check_setup",
                                                                                None))]
    if not metrics:
        return
    from mmimb.hooks.class_stats_hook import ClassStatsHook  # the hooks import each other
    stats_hook = any(isinstance(h, ClassStatsHook) for h in hooks)
    for metric in metrics:
        classes = (metric.dataset_meta or {}).get("classes")
        if classes is None:
            continue
        try:
            metric.check_setup(tuple(classes), stats_hook)
        except ValueError as err:
            raise ValueError(f"{name} ({type(metric).__name__}): {err}") from err


@HOOKS.register_module()
class SetupCheckHook(Hook):
    """Warn about silent misconfigurations; refuse checkpoints that do not fit the model.

    See the module docstring for what is checked, and when.

    Args:
        strict_checkpoint: refuse a checkpoint with tensors of another shape than the model's
            (evaluation, resuming); ``False`` lets fine-tuning change the classifier.

    Raises:
        TypeError: if ``strict_checkpoint`` is not a bool.
        ValueError: from ``after_load_checkpoint``, with ``strict_checkpoint=True``, if a tensor
            of the checkpoint has another shape than the model's.
    """

    priority = "VERY_HIGH"

    def __init__(self, strict_checkpoint: bool = False) -> None:
        if not isinstance(strict_checkpoint, bool):
            raise TypeError(f"strict_checkpoint must be True or False, got "
                            f"{strict_checkpoint!r}")
        self.strict_checkpoint = strict_checkpoint

    def before_train(self, runner: Runner) -> None:
        """Log each warning of :func:`training_setup_warnings` once; check the val metrics."""
        for message in training_setup_warnings(runner.train_dataloader, runner.hooks):
            runner.logger.warning(f"SetupCheckHook: {message}")
        if runner.val_loop is not None:  # mmengine builds it before before_train
            check_evaluator(runner.val_loop, runner.hooks, "val_evaluator")

    def before_test(self, runner: Runner) -> None:
        """Check the test metrics' training counts before inference."""
        check_evaluator(runner.test_loop, runner.hooks, "test_evaluator")

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Refuse a checkpoint of other shapes (``strict_checkpoint``), before it is loaded."""
        if not self.strict_checkpoint:
            return
        mismatches = shape_mismatches(runner.model, checkpoint.get("state_dict", checkpoint))
        if mismatches:
            raise ValueError(mismatch_message(mismatches, checkpoint, runner.cfg.get("model"),
                                              runner.cfg.get("load_from")))
