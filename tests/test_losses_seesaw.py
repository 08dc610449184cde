"""HeadSizedSeesawLoss: mmdet's SeesawLoss, sized by its head, against mmdet's own loss."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from mmdet.models.losses import SeesawLoss
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.runner import Runner

import mmimb  # noqa: F401  (registers the losses)
from mmimb.losses import HeadSizedSeesawLoss
from tests.test_losses_logit_adjust import roi_batch, roi_head, tiny_config

C = 5


def test_the_head_sizes_the_loss_and_the_classifier() -> None:
    head = roi_head(dict(type="HeadSizedSeesawLoss"), num_classes=C)
    assert head.loss_cls.num_classes == C
    assert head.loss_cls.cum_samples.shape == (C + 1,)
    assert head.fc_cls.out_features == C + 2  # C classes, then the objectness pair


def test_losses_and_counts_equal_mmdets_seesaw_over_several_steps() -> None:
    ours = HeadSizedSeesawLoss(p=0.8, q=2.0)
    ours.get_cls_channels(C)
    reference = SeesawLoss(p=0.8, q=2.0, num_classes=C)
    for step in range(3):
        batch = roi_batch(step, C)
        logits = torch.randn(len(batch["labels"]), C + 2, generator=torch.Generator()
                             .manual_seed(10 + step), requires_grad=True)
        ref_logits = logits.detach().clone().requires_grad_(True)
        got = ours(logits, batch["labels"], torch.ones(len(logits)), avg_factor=7.0)
        want = reference(ref_logits, batch["labels"], torch.ones(len(logits)), avg_factor=7.0)
        assert got.keys() == want.keys()
        for key in got:
            torch.testing.assert_close(got[key], want[key])
        sum(got.values()).backward()
        sum(want.values()).backward()
        torch.testing.assert_close(logits.grad, ref_logits.grad)
        torch.testing.assert_close(ours.cum_samples, reference.cum_samples)
    assert ours.cum_samples.sum() > 0


def test_a_given_num_classes_must_match_the_head() -> None:
    assert roi_head(dict(type="HeadSizedSeesawLoss", num_classes=C), num_classes=C
                    ).loss_cls.num_classes == C
    with pytest.raises(ValueError, match=r"head has num_classes=5 but the loss has num_classes=3"):
        roi_head(dict(type="HeadSizedSeesawLoss", num_classes=3), num_classes=C)


def test_logits_of_the_wrong_width_name_num_classes() -> None:
    loss = HeadSizedSeesawLoss()  # outside a head and without num_classes
    with pytest.raises(ValueError, match=r"cls_score has 7 columns but num_classes=1 needs 3"):
        loss(torch.zeros(4, 7), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    (dict(p=-0.1), ValueError, "p"),
    (dict(q=-1.0), ValueError, "q"),
    (dict(q=float("nan")), TypeError, "q"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(num_classes=0), ValueError, "num_classes"),
    (dict(num_classes=2.0), TypeError, "num_classes"),
    (dict(reduction="avg"), ValueError, "reduction"),
])
def test_invalid_arguments_raise_naming_them(kwargs: dict[str, Any], error: type[Exception],
                                             name: str) -> None:
    with pytest.raises(error, match=rf"^{name} must"):
        HeadSizedSeesawLoss(**kwargs)


def test_counts_survive_a_state_dict_round_trip() -> None:
    head = roi_head(dict(type="HeadSizedSeesawLoss"), num_classes=C)
    batch = roi_batch(0, C)
    head.loss_cls(head(batch["feats"])[0], batch["labels"], torch.ones(len(batch["labels"])))
    fresh = roi_head(dict(type="HeadSizedSeesawLoss"), num_classes=C)
    fresh.load_state_dict(copy.deepcopy(head.state_dict()))
    assert fresh.loss_cls.cum_samples.sum() > 0
    torch.testing.assert_close(fresh.loss_cls.cum_samples, head.loss_cls.cum_samples)


@pytest.mark.slow
def test_runner_trains_the_seesaw_config_sized_by_a_smaller_head(tmp_path: Path,
                                                                 tiny_root: Path) -> None:
    register_all_modules(init_default_scope=True)
    # tiny_config sets the head to the tiny set's 4 classes; the config's loss has no
    # num_classes of its own (mmdet's SeesawLoss would have needed a second edit).
    cfg = Config.fromfile(tiny_config(tmp_path, tiny_root,
                                      "seesaw_faster-rcnn_r18tiny_fpn_1k_ltsynth.py", "seesaw"))
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    runner.train()
    loss = runner.model.roi_head.bbox_head.loss_cls
    assert isinstance(loss, HeadSizedSeesawLoss) and loss.num_classes == 4
    assert loss.cum_samples.shape == (5,) and loss.cum_samples[:4].sum() > 0
    state = torch.load(tmp_path / "work" / "iter_2.pth", map_location="cpu",
                       weights_only=False)["state_dict"]
    torch.testing.assert_close(state["roi_head.bbox_head.loss_cls.cum_samples"],
                               loss.cum_samples)
