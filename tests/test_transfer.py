"""Transfer learning through the real runner: pretrain, then fine-tune on other classes.

The tiny Faster R-CNN pretrains for 2 iterations on the tiny synthetic set (4 classes) with
``tools/train.py``; ``configs/faster_rcnn/transfer_faster-rcnn_r18tiny_fpn_3k_aquarium.py`` then
fine-tunes it, pointed at a second generated set with 3 classes in place of Aquarium. The
weights are read by a hook at ``before_train`` (after ``load_from``, before the first
iteration) and ``after_train``, and compared with the pretrained checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from mmimb.datasets.synthetic import generate
from mmimb.tool_utils import build_runner
from tests.conftest import REPO, TINY

pytestmark = pytest.mark.slow

#: The tensors whose shape depends on the number of classes (class-specific box regression).
CLASS_SHAPED = {f"roi_head.bbox_head.{layer}.{p}" for layer in ("fc_cls", "fc_reg")
                for p in ("weight", "bias")}
#: What backbone frozen_stages=1 freezes in mmdet's ResNet: the stem and layer1.
FROZEN_PREFIXES = ("backbone.conv1.", "backbone.norm1.", "backbone.layer1.")

PIPELINE = """[
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs'),
]"""
NO_EVALUATION = """
val_dataloader = val_cfg = val_evaluator = None
test_dataloader = test_cfg = test_evaluator = None
"""


def pretrain_config(tmp_path: Path, data_root: Path) -> Path:
    """The synthetic baseline on the tiny set, 2 iterations, a checkpoint at the end."""
    path = tmp_path / "pretrain.py"
    path.write_text(f"""
_base_ = '{REPO / 'configs/faster_rcnn/faster-rcnn_r18tiny_fpn_1k_ltsynth.py'}'
model = dict(roi_head=dict(bbox_head=dict(num_classes={TINY.num_classes})))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root='{data_root}/', synthetic={dataclasses.asdict(TINY)!r},
                 pipeline={PIPELINE}))
train_cfg = dict(max_iters=2)
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))
{NO_EVALUATION}""")
    return path


def finetune_config(tmp_path: Path, data_root: Path, load_from: Path) -> Path:
    """The transfer config with the Aquarium data replaced by ``data_root`` (COCO files)."""
    classes = tuple(c["name"] for c in json.loads(
        (data_root / "annotations/train.json").read_text())["categories"])
    path = tmp_path / "finetune.py"
    path.write_text(f"""
_base_ = '{REPO / 'configs/faster_rcnn/transfer_faster-rcnn_r18tiny_fpn_3k_aquarium.py'}'
load_from = '{load_from}'
model = dict(roi_head=dict(bbox_head=dict(num_classes={len(classes)})))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root='{data_root}/', metainfo=dict(classes={classes!r}),
                 ann_file='annotations/train.json', data_prefix=dict(img='train/'),
                 pipeline={PIPELINE}))
train_cfg = dict(max_iters=3)
# Another seed than pretraining: initial weights that differ from the checkpoint's, so a
# checkpoint that was not loaded shows.
randomness = dict(seed=1)
default_hooks = dict(logger=dict(interval=1))
{NO_EVALUATION}""")
    return path


class WeightsRecorder(Hook):
    """Copies the model's state dict after loading (``before_train``) and after training."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.requires_grad: dict[str, bool] = {}

    def _model(self, runner: Runner) -> torch.nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner: Runner) -> None:
        model = self._model(runner)
        self.states["loaded"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.requires_grad = {k: p.requires_grad for k, p in model.named_parameters()}

    def after_train(self, runner: Runner) -> None:
        model = self._model(runner)
        self.states["trained"] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_finetune_loads_pretrained_weights_and_keeps_frozen_stages(
        tmp_path: Path, tiny_root: Path) -> None:
    pretrain_work = tmp_path / "pretrain"
    proc = subprocess.run(
        [sys.executable, "tools/train.py", str(pretrain_config(tmp_path, tiny_root)),
         "--work-dir", str(pretrain_work)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoint = pretrain_work / "iter_2.pth"
    pretrained = torch.load(checkpoint, map_location="cpu")["state_dict"]

    target_root = generate(tmp_path / "target", dataclasses.replace(TINY, num_classes=3, seed=2))
    cfg = Config.fromfile(finetune_config(tmp_path, target_root, checkpoint))
    cfg.work_dir = str(tmp_path / "finetune")
    assert cfg.model.backbone.frozen_stages == 1
    runner = build_runner(cfg)
    recorder = WeightsRecorder()
    runner.register_hook(recorder)
    runner.train()
    loaded, trained = recorder.states["loaded"], recorder.states["trained"]

    # Every tensor of the checkpoint that fits the model is loaded, exactly; the class-shaped
    # ones keep the model's new shape (3 classes + background; 4 boxes per class).
    assert set(loaded) == set(pretrained)
    misfits = {k for k in loaded if loaded[k].shape != pretrained[k].shape}
    assert misfits == CLASS_SHAPED
    for name in sorted(set(loaded) - CLASS_SHAPED):
        assert torch.equal(loaded[name], pretrained[name]), name
    assert loaded["roi_head.bbox_head.fc_cls.weight"].shape == (3 + 1, 256)
    assert pretrained["roi_head.bbox_head.fc_cls.weight"].shape == (TINY.num_classes + 1, 256)
    assert loaded["roi_head.bbox_head.fc_reg.weight"].shape == (3 * 4, 256)

    # Frozen stages: no gradient, weights and BN statistics those of the checkpoint after
    # fine-tuning; the later stages' weights, the neck's and the classifier's moved.
    frozen = [k for k in loaded if k.startswith(FROZEN_PREFIXES)]
    assert frozen and all(not recorder.requires_grad[k] for k in frozen
                          if k in recorder.requires_grad)
    for name in frozen:
        assert torch.equal(trained[name], pretrained[name]), name
    for name in ("backbone.layer2.0.conv1.weight", "backbone.layer4.1.conv2.weight",
                 "neck.fpn_convs.0.conv.weight", "roi_head.bbox_head.fc_cls.weight"):
        assert recorder.requires_grad[name], name
        assert not torch.equal(trained[name], loaded[name]), name
