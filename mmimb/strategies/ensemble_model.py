"""``BoxFusionEnsemble``: trained detectors that predict as one model, their boxes fused.

The model takes the place of a detector in a test (or validation) run: every member predicts
the batch with its own data preprocessor and weights, and :class:`~mmimb.strategies.BoxFusion`
fuses the members' predictions image by image, in the pixels of the original image. The
evaluator (``LongTailMetric``) and the rest of the runner see one detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from mmdet.registry import MODELS, TASK_UTILS
from mmengine.model import BaseModel
from mmengine.runner import load_checkpoint

from mmimb.strategies.fusion import BoxFusion
from mmimb.strategies.training import trained_classes


def check_same_classes(members: Sequence[tuple[str, Sequence[str] | None]]) -> tuple[str, ...]:
    """The class list that all members were trained on.

    Args:
        members: ``(name, classes)`` of every member; ``classes`` is ``None`` when unknown (a
            checkpoint without ``dataset_meta``), which agrees with any list.

    Returns:
        The common classes (empty when no member knows its classes).

    Raises:
        ValueError: if two members know different class lists (order included: a label is an
            index into the list), naming both members and both lists.
    """
    known = [(name, tuple(classes)) for name, classes in members if classes is not None]
    for name, classes in known[1:]:
        if classes != known[0][1]:
            first_name, first = known[0]
            raise ValueError(
                f"ensemble members were trained on different class lists: {first_name} on "
                f"{len(first)} classes {list(first)}, {name} on {len(classes)} classes "
                f"{list(classes)}. Their labels cannot be fused; retrain the odd member on the "
                "ensemble's classes")
    return known[0][1] if known else ()


@MODELS.register_module()
class BoxFusionEnsemble(BaseModel):
    """Several trained detectors whose predictions are fused into one (test and val only).

    Config example (what ``tools/train_ensemble.py`` evaluates)::

        model = dict(
            type='BoxFusionEnsemble',
            members=[dict(model=detector_cfg_0, checkpoint='member0/iter_1000.pth'),
                     dict(model=detector_cfg_1, checkpoint='member1/iter_1000.pth')],
            fusion=dict(type='BoxFusion', method='wbf', iou_thr=0.55))

    Each member is built from its config and loaded from its checkpoint (strictly: every
    weight must fit). The members must have been trained on the same class list (read from
    their checkpoints' ``dataset_meta``). The data of the test dataloader go to every member as
    they are, so the members must share the test pipeline (members trained from one config do).

    Args:
        members: at least two ``dict(model=<detector config>, checkpoint=<path>)``.
        fusion: a :class:`BoxFusion` config (``TASK_UTILS``); weighted boxes fusion by default.
        init_cfg: unused (the weights come from the checkpoints); kept for mmengine.

    Attributes:
        classes: the members' common class list (empty if no checkpoint records it).

    Raises:
        ValueError: with fewer than two members, a member without ``model`` or ``checkpoint``,
            fusion ``weights`` of another length than ``members``, or members trained on
            different class lists.
    """

    def __init__(self, members: Sequence[Mapping[str, Any]],
                 fusion: Mapping[str, Any] | None = None,
                 init_cfg: dict | None = None) -> None:
        if isinstance(members, str | Mapping) or len(members) < 2:
            raise ValueError(f"members must list at least two dict(model=..., checkpoint=...), "
                             f"got {members!r}")
        for i, member in enumerate(members):
            if not isinstance(member, Mapping) or set(member) != {"model", "checkpoint"}:
                raise ValueError(f"members[{i}] must be dict(model=..., checkpoint=...), got "
                                 f"{member!r}")
        super().__init__(init_cfg=init_cfg)
        self.fusion: BoxFusion = TASK_UTILS.build(dict(fusion or dict(type="BoxFusion")))
        if self.fusion.weights is not None and len(self.fusion.weights) != len(members):
            raise ValueError(f"fusion weights must have one entry per member: {len(members)} "
                             f"members, got weights {self.fusion.weights}")
        self.members = torch.nn.ModuleList()
        named_classes = []
        for i, member in enumerate(members):
            model = MODELS.build(member["model"])
            ckpt = load_checkpoint(model, str(member["checkpoint"]), map_location="cpu",
                                   strict=True)
            named_classes.append((f"member {i} ({member['checkpoint']})",
                                  trained_classes(ckpt)))
            self.members.append(model)
        self.classes = check_same_classes(named_classes)

    def test_step(self, data: dict | tuple | list) -> list:
        """Predict the batch with every member and fuse the predictions of each image.

        Returns:
            The data samples of the batch, with the fused ``pred_instances``.
        """
        predictions = []
        samples: list = []
        for member in self.members:
            # Each call preprocesses its own copy of the batch and returns new data samples.
            samples = cast(BaseModel, member).test_step(data)
            predictions.append([s.pred_instances for s in samples])
        for i, sample in enumerate(samples):
            sample.pred_instances = self.fusion([p[i] for p in predictions],
                                                tuple(sample.metainfo["ori_shape"][:2]))
        return samples

    def val_step(self, data: dict | tuple | list) -> list:
        """Same as :meth:`test_step`."""
        return self.test_step(data)

    def train_step(self, data: Any, optim_wrapper: Any) -> dict:
        """Refused: an ensemble is trained member by member (``tools/train_ensemble.py``)."""
        raise TypeError("BoxFusionEnsemble is not trained as one model: train its members "
                        "separately (tools/train_ensemble.py does) and fuse them at test time")

    def forward(self, inputs: Any, data_samples: Any = None, mode: str = "tensor") -> Any:
        """Refused: members preprocess the batch themselves, in :meth:`test_step`."""
        raise TypeError("BoxFusionEnsemble predicts through test_step/val_step only (each member "
                        "preprocesses the raw batch with its own data preprocessor)")
