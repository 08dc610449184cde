"""ClassStatsHook: training-set counts reach 'auto' losses, survive checkpoints, and fail loudly."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from mmdet.datasets import CocoDataset
from mmdet.registry import HOOKS
from mmengine.model import BaseModel
from mmengine.runner import Runner
from PIL import Image
from torch import nn

import mmimb  # noqa: F401  (registers the hook and the losses)
from mmimb.hooks import ClassStatsHook
from mmimb.losses import (
    BalancedSoftmaxLoss,
    ClassBalancedCrossEntropyLoss,
    ClassBalancedFocalLoss,
    FederatedLoss,
    PostHocLogitAdjustedLoss,
    SoftmaxFocalLoss,
)

CLASSES = ("cat", "dog", "eel")
# Boxes per image, as category ids (1-based, COCO style); image 3 has none, eel has none.
IMAGE_BOXES = [[1, 1, 2], [1], [2, 2, 1, 1], []]
INSTANCE_COUNTS = [5, 3, 0]
IMAGE_COUNTS = [3, 2, 0]


@pytest.fixture(autouse=True)
def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMIMB_DISABLE_COMPILE", "1")


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    """A real mmdet CocoDataset of four 32x32 images written to disk."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for img_id, boxes in enumerate(IMAGE_BOXES, start=1):
        name = f"{img_id}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            root / "images" / name)
        images.append(dict(id=img_id, file_name=name, width=32, height=32))
        for cat in boxes:
            annotations.append(dict(id=len(annotations) + 1, image_id=img_id, category_id=cat,
                                    bbox=[2, 2, 10, 10], area=100, iscrowd=0))
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)]
    (root / "ann.json").write_text(json.dumps(dict(images=images, annotations=annotations,
                                                   categories=categories)))
    return CocoDataset(data_root=str(root), ann_file="ann.json",
                       data_prefix=dict(img="images/"), metainfo=dict(classes=CLASSES),
                       filter_cfg=None, pipeline=[], lazy_init=True)


class RecordingLogger:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


def fake_runner(model: nn.Module, dataset: Any | None) -> Any:
    loader = None if dataset is None else SimpleNamespace(dataset=dataset)
    return SimpleNamespace(model=model, train_dataloader=loader, logger=RecordingLogger())


def losses() -> nn.Sequential:
    return nn.Sequential(
        ClassBalancedFocalLoss(num_classes=3, class_counts="auto"),
        SoftmaxFocalLoss(num_classes=3, class_counts="auto"),
        ClassBalancedCrossEntropyLoss(class_counts=[9, 9, 1]),
        ClassBalancedFocalLoss(),
    )


def test_builds_from_one_config_line() -> None:
    hook = HOOKS.build(dict(type="ClassStatsHook"))
    assert isinstance(hook, ClassStatsHook) and hook.by == "instance"
    assert hook.priority == "VERY_HIGH"


@pytest.mark.parametrize(("by", "expected"), [("instance", INSTANCE_COUNTS),
                                              ("image", IMAGE_COUNTS)])
def test_fills_auto_losses_with_the_dataset_counts(coco_dataset: CocoDataset, by: str,
                                                   expected: list[int]) -> None:
    model = losses()
    # DataParallel is a registered mmengine model wrapper: the hook must look inside.
    runner = fake_runner(nn.DataParallel(model), coco_dataset)
    ClassStatsHook(by=by).before_train(runner)
    assert model[0].get_class_counts().tolist() == expected
    assert model[1].get_class_counts().tolist() == expected
    assert model[2].get_class_counts().tolist() == [9, 9, 1]  # explicit counts left alone
    assert model[3].get_class_counts() is None
    # The class without training instances gets the largest weight, and it is finite.
    weights = model[0].class_weights()
    assert torch.isfinite(weights).all() and weights.argmax().item() == 2
    assert runner.logger.warnings == []


def test_auto_without_a_training_dataset_raises() -> None:
    runner = fake_runner(losses(), None)
    with pytest.raises(ValueError,
                       match=r"2 loss\(es\) and 0 metric\(s\) have class_counts='auto'"):
        ClassStatsHook().before_train(runner)
    with pytest.raises(ValueError, match="num_classes=3"):
        runner.model[0](torch.zeros(2, 3), torch.tensor([0, 3]))


def test_mismatched_number_of_classes_raises(coco_dataset: CocoDataset) -> None:
    model = nn.Sequential(SoftmaxFocalLoss(num_classes=4, class_counts="auto"))
    with pytest.raises(ValueError, match="3 entries .* num_classes=4"):
        ClassStatsHook().before_train(fake_runner(model, coco_dataset))


def test_restored_counts_are_kept_when_equal_and_replaced_loudly_otherwise(
        coco_dataset: CocoDataset) -> None:
    model = losses()
    model[0].set_class_counts(INSTANCE_COUNTS)  # as restored from a checkpoint
    model[1].set_class_counts([1, 2, 3])  # from a checkpoint trained on other data
    runner = fake_runner(model, coco_dataset)
    ClassStatsHook().before_train(runner)
    assert model[0].get_class_counts().tolist() == INSTANCE_COUNTS
    assert model[1].get_class_counts().tolist() == INSTANCE_COUNTS
    assert len(runner.logger.warnings) == 1
    assert "[1, 2, 3]" in runner.logger.warnings[0] and "[5, 3, 0]" in runner.logger.warnings[0]


def test_invalid_by_raises() -> None:
    with pytest.raises(ValueError, match="by must be"):
        ClassStatsHook(by="box")


# -- through mmengine's Runner: counts before the first iteration, in checkpoints, on resume ---


class ToyDataset(torch.utils.data.Dataset):
    """Four images with the boxes of ``IMAGE_BOXES``; each item is one feature and one label."""

    metainfo = dict(classes=CLASSES)

    def __len__(self) -> int:
        return len(IMAGE_BOXES)

    def get_data_info(self, idx: int) -> dict[str, Any]:
        return dict(instances=[dict(bbox_label=c - 1, ignore_flag=0) for c in IMAGE_BOXES[idx]])

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        label = IMAGE_BOXES[idx][0] - 1 if IMAGE_BOXES[idx] else len(CLASSES)
        return dict(inputs=torch.full((4,), float(idx)), label=torch.tensor(label))


class ToyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, len(CLASSES))
        self.loss_cls = ClassBalancedFocalLoss(num_classes=len(CLASSES), class_counts="auto")
        self.counts_at_first_forward: list[int] | None = None

    def forward(self, inputs: torch.Tensor, label: torch.Tensor,
                mode: str = "tensor") -> dict[str, torch.Tensor] | torch.Tensor:
        if self.counts_at_first_forward is None:
            counts = self.loss_cls.get_class_counts()
            self.counts_at_first_forward = None if counts is None else counts.tolist()
        logits = self.fc(inputs)
        return dict(loss=self.loss_cls(logits, label)) if mode == "loss" else logits


def make_runner(work_dir: Path, name: str, max_iters: int, with_hook: bool = True,
                **kwargs: Any) -> Runner:
    return Runner(
        model=ToyModel(), work_dir=str(work_dir), experiment_name=name, default_scope="mmdet",
        train_dataloader=dict(dataset=ToyDataset(), batch_size=2, num_workers=0,
                              sampler=dict(type="DefaultSampler", shuffle=False),
                              collate_fn=dict(type="default_collate")),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)),
        custom_hooks=[dict(type="ClassStatsHook")] if with_hook else [],
        log_level="WARNING", **kwargs)


def test_runner_fills_counts_before_training_and_checkpoints_restore_them(
        tmp_path: Path) -> None:
    runner = make_runner(tmp_path, "train", max_iters=2)
    runner.train()
    assert runner.model.counts_at_first_forward == INSTANCE_COUNTS
    ckpt = tmp_path / "iter_2.pth"
    state = torch.load(ckpt, map_location="cpu")["state_dict"]
    assert state["loss_cls.class_counts"].tolist() == INSTANCE_COUNTS

    # Resuming without the hook: the counts come from the checkpoint alone.
    resumed = make_runner(tmp_path, "resume", max_iters=4, with_hook=False, resume=True,
                          load_from=str(ckpt))
    resumed.train()
    assert resumed.model.counts_at_first_forward == INSTANCE_COUNTS
    assert resumed.iter == 4

    # Without hook and without checkpoint, 'auto' fails at the first forward, naming the fix.
    bare = make_runner(tmp_path, "bare", max_iters=1, with_hook=False)
    with pytest.raises(ValueError, match="ClassStatsHook"):
        bare.train()


# -- what a loss asks for (counts_by), and test time (before_test) ------------------------------


def test_a_loss_asking_for_image_counts_gets_them_whatever_by_is(
        coco_dataset: CocoDataset) -> None:
    federated = FederatedLoss()  # counts_by = 'image'; its number of classes is not given
    assert federated.counts_by == "image" and federated.num_classes is None
    model = nn.Sequential(federated, SoftmaxFocalLoss(class_counts="auto"))
    runner = fake_runner(model, coco_dataset)
    ClassStatsHook(by="instance").before_train(runner)
    assert federated.get_class_counts().tolist() == IMAGE_COUNTS
    assert federated.num_classes == 3  # from the training set
    assert model[1].get_class_counts().tolist() == INSTANCE_COUNTS  # the hook's by
    ClassStatsHook(by="image").before_train(runner)
    assert model[1].get_class_counts().tolist() == IMAGE_COUNTS


def test_mismatch_between_head_loss_and_training_set_names_all_three(
        coco_dataset: CocoDataset) -> None:
    loss = BalancedSoftmaxLoss()
    loss.get_cls_channels(4)  # as an RoI head with num_classes=4 does
    with pytest.raises(ValueError, match=r"class_counts has 3 entries .*num_classes=4 \(head "
                                         r"num_classes: 4; loss num_classes: None; training set"
                                         r" / class_counts: 3 classes\)"):
        ClassStatsHook().before_train(fake_runner(nn.Sequential(loss), coco_dataset))


def test_before_test_fills_losses_without_counts_and_keeps_restored_ones(
        coco_dataset: CocoDataset) -> None:
    waiting = PostHocLogitAdjustedLoss()  # a cross-entropy checkpoint brought no counts
    waiting.get_cls_channels(3)
    restored = PostHocLogitAdjustedLoss()
    restored.get_cls_channels(3)
    restored.set_class_counts([7, 7, 7])  # as loaded from its checkpoint
    dataset_cfg = dict(type="CocoDataset", data_root=coco_dataset.data_root,
                       ann_file="ann.json", data_prefix=dict(img="images/"),
                       metainfo=dict(classes=CLASSES), filter_cfg=None, pipeline=[],
                       lazy_init=True)
    runner = SimpleNamespace(model=nn.Sequential(waiting, restored),
                             cfg=dict(train_dataloader=dict(dataset=dataset_cfg)),
                             test_loop=SimpleNamespace(evaluator=SimpleNamespace(metrics=[])),
                             logger=RecordingLogger())
    ClassStatsHook().before_test(runner)
    assert waiting.get_class_counts().tolist() == INSTANCE_COUNTS
    assert restored.get_class_counts().tolist() == [7, 7, 7]
    runner.cfg = {}
    waiting2 = PostHocLogitAdjustedLoss()
    runner.model = nn.Sequential(waiting2)
    with pytest.raises(ValueError, match=r"1 loss\(es\) and 0 test metric\(s\).*no "
                                         r"train_dataloader.dataset"):
        ClassStatsHook().before_test(runner)


def test_counts_restored_into_a_loss_that_did_not_know_its_classes() -> None:
    # A dense head never tells the loss its number of classes: the checkpoint sizes the buffer.
    trained = ClassBalancedFocalLoss(class_counts="auto")
    trained.set_class_counts([4, 0, 9])
    fresh = ClassBalancedFocalLoss(class_counts="auto")
    assert fresh.num_classes is None and fresh.get_class_counts() is None
    fresh.load_state_dict(trained.state_dict())
    assert fresh.num_classes == 3 and fresh.get_class_counts().tolist() == [4, 0, 9]
    torch.testing.assert_close(fresh.class_weights(), trained.class_weights())
    # A checkpoint saved before any counts were known restores nothing, strict or not.
    ClassBalancedFocalLoss(class_counts="auto").load_state_dict(
        ClassBalancedFocalLoss(class_counts="auto").state_dict())
