"""Hand the training set's class counts to every loss configured with ``class_counts='auto'``.

Switched on in one config line::

    custom_hooks = [dict(type='ClassStatsHook')]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mmdet.registry import DATASETS, HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmimb.stats import class_stats

if TYPE_CHECKING:
    from mmengine.runner import Runner

_BY = ("instance", "image")


def _summary(counts: np.ndarray) -> str:
    return (f"{len(counts)} classes, min {counts.min()}, max {counts.max()}, "
            f"{int(np.count_nonzero(counts == 0))} with none")


@HOOKS.register_module()
class ClassStatsHook(Hook):
    """Give the training set's class statistics to every loss and metric that waits for them.

    In ``before_train`` (which mmengine calls after loading or resuming a checkpoint), the hook
    computes :func:`mmimb.stats.class_stats` of ``runner.train_dataloader.dataset`` once and
    calls ``set_class_counts(counts)`` on every sub-module of the (unwrapped) model that has the
    method and was configured with ``class_counts='auto'`` (``counts_from_dataset`` is true).
    Losses given explicit counts are left alone. Metrics of the validation (``before_train``)
    and test (``before_test``) evaluators configured with ``class_counts='auto'``, such as
    :class:`mmimb.evaluation.LongTailMetric`, receive the whole :class:`~mmimb.stats.ClassStats`
    through ``set_class_stats``. Statistics are those of the unique training images
    (re-sampling wrappers are looked through).

    What is counted: a loss whose formula is defined on one kind of count says so in its
    ``counts_by`` attribute (``'image'`` for the federated loss and ECM, whose papers weight
    classes by the number of images containing them); it gets that kind whatever ``by`` is.
    Every other loss (no ``counts_by``, or ``None``) gets the kind named by ``by``.

    Testing (``tools/test.py``, ``before_test``): a loss that waits for counts and has none
    after the checkpoint was loaded (a checkpoint trained with another loss, such as a plain
    cross-entropy model evaluated with :class:`mmimb.losses.PostHocLogitAdjustedLoss`) gets
    those of the config's ``train_dataloader.dataset``; counts restored from the checkpoint
    are kept, since the model was trained with them.

    Checkpoints: the counts are a buffer of the loss, so a checkpoint restores them before this
    hook runs. On resume the training set is the same, so the recomputed counts equal the
    restored ones and nothing changes. If they differ (fine-tuning with ``load_from`` a model
    trained on other data, or a changed training set) the counts of the current training set
    replace the restored ones and a warning gives both.

    Args:
        by: count ``'instance'`` (boxes per class, default: every box yields positive samples
            for the classifier) or ``'image'`` (images containing the class), for the losses
            that do not name a kind in ``counts_by``.

    Raises:
        ValueError: if ``by`` is neither, or (in ``before_train``) the runner has no training
            dataset while a loss waits for counts.
    """

    priority = "VERY_HIGH"

    def __init__(self, by: str = "instance") -> None:
        if by not in _BY:
            raise ValueError(f"by must be one of {_BY}, got {by!r}")
        self.by = by

    @staticmethod
    def targets(model: Any) -> list[Any]:
        """The sub-modules of ``model`` that wait for counts from the training set."""
        if is_model_wrapper(model):
            model = model.module
        return [m for m in model.modules()
                if callable(getattr(m, "set_class_counts", None))
                and getattr(m, "counts_from_dataset", False)]

    @staticmethod
    def waiting_metrics(loop: Any) -> list[Any]:
        """The metrics of a val/test loop's evaluator that wait for training statistics."""
        evaluator = getattr(loop, "evaluator", None)
        return [m for m in getattr(evaluator, "metrics", [])
                if callable(getattr(m, "set_class_stats", None))
                and getattr(m, "counts_from_dataset", False)]

    def before_train(self, runner: Runner) -> None:
        """Compute the statistics once; give them to every waiting loss and val metric."""
        losses = self.targets(runner.model)
        metrics = self.waiting_metrics(getattr(runner, "val_loop", None))
        if not losses and not metrics:
            runner.logger.warning(
                "ClassStatsHook: no loss or metric with class_counts='auto' waits for counts")
            return
        dataset = getattr(getattr(runner, "train_dataloader", None), "dataset", None)
        if dataset is None:
            raise ValueError(
                f"ClassStatsHook: {len(losses)} loss(es) and {len(metrics)} metric(s) have "
                "class_counts='auto' but the runner has no training dataset to count")
        stats = class_stats(dataset)
        for by in sorted({self.count_kind(module) for module in losses}):
            runner.logger.info(f"ClassStatsHook: {by} counts of the training set: "
                               f"{_summary(stats.counts(by))}")
        for module in losses:
            counts = stats.counts(self.count_kind(module))
            restored = module.get_class_counts()
            if restored is not None and not np.array_equal(restored, counts):
                runner.logger.warning(
                    f"ClassStatsHook: {type(module).__name__} had class counts "
                    f"{restored.tolist()} (from a checkpoint); replacing them with the training "
                    f"set's {counts.tolist()}")
            module.set_class_counts(counts)
        for metric in metrics:
            metric.set_class_stats(stats)

    def count_kind(self, module: Any) -> str:
        """The kind of count ``module`` gets: its own ``counts_by``, else the hook's ``by``."""
        return getattr(module, "counts_by", None) or self.by

    def before_test(self, runner: Runner) -> None:
        """Give the training statistics to waiting test metrics and to losses that have no
        counts after the checkpoint was loaded (``tools/test.py``).

        The training set is built from ``train_dataloader.dataset`` of the config (its
        annotations are read; no image is loaded).

        Raises:
            ValueError: if a metric or loss waits and the config has no training dataset.
        """
        metrics = self.waiting_metrics(runner.test_loop)
        losses = [m for m in self.targets(runner.model) if m.get_class_counts() is None]
        if not metrics and not losses:
            return
        dataset_cfg = runner.cfg.get("train_dataloader", {}).get("dataset")
        if dataset_cfg is None:
            raise ValueError(
                f"ClassStatsHook: {len(losses)} loss(es) and {len(metrics)} test metric(s) "
                "have class_counts='auto' but the config has no train_dataloader.dataset to "
                "count")
        stats = class_stats(DATASETS.build(dataset_cfg))
        for module in losses:
            counts = stats.counts(self.count_kind(module))
            runner.logger.info(
                f"ClassStatsHook: {type(module).__name__} has no class counts from the "
                f"checkpoint; using the training set's {self.count_kind(module)} counts: "
                f"{_summary(counts)}")
            module.set_class_counts(counts)
        for metric in metrics:
            metric.set_class_stats(stats)
