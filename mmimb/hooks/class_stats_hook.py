"""Hand the training set's class counts to every loss configured with ``class_counts='auto'``.

Switched on in one config line::

    custom_hooks = [dict(type='ClassStatsHook')]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mmdet.registry import HOOKS
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
    """Fill ``class_counts='auto'`` losses with the training set's counts before training.

    In ``before_train`` (which mmengine calls after loading or resuming a checkpoint), the hook
    computes :func:`mmimb.stats.class_stats` of ``runner.train_dataloader.dataset`` once and
    calls ``set_class_counts(counts)`` on every sub-module of the (unwrapped) model that has the
    method and was configured with ``class_counts='auto'`` (``counts_from_dataset`` is true).
    Losses given explicit counts are left alone.

    Checkpoints: the counts are a buffer of the loss, so a checkpoint restores them before this
    hook runs. On resume the training set is the same, so the recomputed counts equal the
    restored ones and nothing changes. If they differ (fine-tuning with ``load_from`` a model
    trained on other data, or a changed training set) the counts of the current training set
    replace the restored ones and a warning gives both.

    Args:
        by: count ``'instance'`` (boxes per class, default: every box yields positive samples
            for the classifier) or ``'image'`` (images containing the class).

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

    def before_train(self, runner: Runner) -> None:
        """Compute the counts once and give them to every waiting loss."""
        targets = self.targets(runner.model)
        if not targets:
            runner.logger.warning("ClassStatsHook: no loss with class_counts='auto' in the model")
            return
        dataset = getattr(getattr(runner, "train_dataloader", None), "dataset", None)
        if dataset is None:
            raise ValueError(
                f"ClassStatsHook: {len(targets)} loss(es) have class_counts='auto' but the "
                "runner has no training dataset to count")
        counts = class_stats(dataset).counts(self.by)
        runner.logger.info(f"ClassStatsHook: {self.by} counts of the training set: "
                           f"{_summary(counts)}")
        for module in targets:
            restored = module.get_class_counts()
            if restored is not None and not np.array_equal(restored, counts):
                runner.logger.warning(
                    f"ClassStatsHook: {type(module).__name__} had class counts "
                    f"{restored.tolist()} (from a checkpoint); replacing them with the training "
                    f"set's {counts.tolist()}")
            module.set_class_counts(counts)
