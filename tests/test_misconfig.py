"""Mistakes that passed silently warn once, or are refused with a message naming the cause.

Issue 14, item 4: a ``RepeatFactorDataset`` that nobody hands the epoch (never redraws), a
re-sampling sampler over a re-sampling wrapper (compounded repeats), a checkpoint whose
classifier has another shape than the config's (mmengine evaluated a random classifier), and
``--resume`` into an empty work folder. Item 13: 8-bit crops pasted into a 16-bit image, a NaN
detection score, an empty or text file given as a checkpoint, ``--cfg-options`` keys that match
nothing. The tools are run end to end on the tiny synthetic set where the issue found the
problem there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import ClassBalancedDataset
from pycocotools.coco import COCO

from mmimb.datasets.wrappers import DatasetEpochHook, RepeatFactorDataset
from mmimb.evaluation import LongTailMetric
from mmimb.hooks.setup_check import (
    mismatch_message,
    missing_epoch_hook_warnings,
    shape_mismatches,
    stacked_resampling_warnings,
)
from mmimb.samplers import RepeatFactorSampler
from mmimb.tool_utils import apply_resume, check_checkpoint_file, load_config, unmatched_cfg_options
from mmimb.transforms import RareClassCopyPaste
from tests.conftest import REPO, TINY
from tests.test_long_tail_metric import metric_inputs
from tests.test_samplers import HAND_LABELS, fake_dataset
from tests.test_train_e2e import write_config
from tests.test_transforms import coco_cfg, loaded

# ---------------------------------------------------------------------------------------------
# Item 4: re-sampling stacked on re-sampling; a wrapper that is never handed the epoch.


def wrapper(**kwargs: Any) -> RepeatFactorDataset:
    return RepeatFactorDataset(fake_dataset(HAND_LABELS), oversample_thr=1.0, seed=0, **kwargs)


def test_sampler_over_a_resampling_wrapper_warns_naming_both() -> None:
    inner = wrapper()
    sampler = RepeatFactorSampler(inner, oversample_thr=1.0, seed=0)
    # 10 images; t = 1 repeats every class (r = (1 / 0.7) ** 0.5, 5 ** 0.5, 10 ** 0.5 for the
    # image frequencies 0.7, 0.2, 0.1), and the sampler repeats the wrapper's slots again.
    slots, draws = len(inner), len(sampler.epoch_indices())
    assert 10 < slots < draws
    [message] = stacked_resampling_warnings(inner, sampler)
    assert message.startswith("train_dataloader: the sampler RepeatFactorSampler re-samples "
                              "RepeatFactorDataset")
    assert f"(10 images -> {slots} slots -> {draws} draws per epoch)" in message
    assert "Keep one of the two" in message
    # Either one alone is what the issue asks for: no warning.
    assert stacked_resampling_warnings(inner, None) == []
    plain = fake_dataset(HAND_LABELS)
    assert stacked_resampling_warnings(plain, RepeatFactorSampler(plain, seed=0)) == []


def test_wrapper_inside_a_wrapper_warns_and_side_by_side_wrappers_do_not() -> None:
    inner = ClassBalancedDataset(fake_dataset(HAND_LABELS), oversample_thr=1.0)
    outer = RepeatFactorDataset(inner, oversample_thr=1.0, seed=0)
    [message] = stacked_resampling_warnings(outer, None)
    assert "the wrapper RepeatFactorDataset re-samples ClassBalancedDataset" in message
    # mmengine's table: the ceil of r = (1 / 0.7) ** 0.5 (6 images of a), 5 ** 0.5 (the 2 of
    # b), 10 ** 0.5 (c), and 1 for the empty image.
    assert len(inner) == 6 * 2 + 2 * 3 + 4 + 1 == 23
    assert f"(10 images -> 23 slots -> {len(outer)} slots)" in message
    # Two wrapped datasets side by side (torch's ConcatDataset takes any) are each re-sampled
    # once.
    side_by_side = torch.utils.data.ConcatDataset([wrapper(), wrapper()])
    assert stacked_resampling_warnings(side_by_side, None) == []


def test_stochastic_wrapper_without_epoch_hook_warns() -> None:
    concat = torch.utils.data.ConcatDataset([wrapper(), fake_dataset(HAND_LABELS)])
    [message] = missing_epoch_hook_warnings(concat, hooks=[])
    assert "RepeatFactorDataset(rounding='stochastic')" in message
    assert "custom_hooks=[dict(type='DatasetEpochHook')]" in message
    assert missing_epoch_hook_warnings(concat, hooks=[DatasetEpochHook()]) == []
    # A fixed table (mmengine's rounding) has nothing to redraw.
    assert missing_epoch_hook_warnings(wrapper(rounding="ceil"), hooks=[]) == []


# ---------------------------------------------------------------------------------------------
# Item 4: a checkpoint of another shape.


def test_shape_mismatch_names_parameter_shapes_and_classes() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 5))
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 13))
    state = {f"module.{k}": v for k, v in other.state_dict().items()}  # saved from DDP
    mismatches = shape_mismatches(model, state)
    assert mismatches == [("1.weight", (13, 8), (5, 8)), ("1.bias", (13,), (5,))]
    assert shape_mismatches(model, model.state_dict()) == []
    # An empty buffer is a placeholder its module sizes on load (EFL's gradient statistics).
    model.register_buffer("pos_grad", torch.zeros(0))
    assert shape_mismatches(model, {**state, "pos_grad": torch.ones(4)}) == mismatches
    checkpoint = {"state_dict": state,
                  "meta": {"dataset_meta": {"classes": [f"c{i}" for i in range(12)]}}}
    message = mismatch_message(mismatches, checkpoint,
                               {"head": {"num_classes": 4, "loss": {"type": "CE"}}}, "a.pth")
    assert message.startswith("checkpoint a.pth does not fit the config's model: 1.weight has "
                              "shape [13, 8] in the checkpoint and [5, 8] in the model (and 1 "
                              "more tensor(s))")
    assert "trained on 12 classes (c0, c1, c2, c3, c4 ...) but the config's model has " \
           "num_classes=4" in message
    # Without class names in the checkpoint the usual causes are listed.
    assert "num_classes, or use_sigmoid" in mismatch_message(mismatches, {"state_dict": state})


# ---------------------------------------------------------------------------------------------
# Item 13: --cfg-options that match nothing; checkpoint files that are not checkpoints.


def test_unmatched_cfg_options_are_named_with_the_closest_keys(tmp_path: Path) -> None:
    cfg = Config(dict(train_cfg=dict(max_iters=4, val_interval=2),
                      train_pipeline=[dict(type="Load"), dict(type="Resize", scale=(8, 8))]))
    # train_pipeline.5.scale: mmengine itself raises "Index 5 exceeds the length of list".
    options = {"train_cfg.max_iters": 2, "train_cfg.max_iter": 2, "train_pipeline.1.scale": 4,
               "train_pipeline.5.scale": 4, "randomnes.seed": 1}
    assert unmatched_cfg_options(cfg, options) == [
        "--cfg-options train_cfg.max_iter: train_cfg has no key 'max_iter' (did you mean "
        "'max_iters'?); mmengine adds it as a new setting, which nothing may read",
        "--cfg-options randomnes.seed: the config has no key 'randomnes'; mmengine adds it as "
        "a new setting, which nothing may read",
    ]
    # load_config warns and still merges, as mmengine does.
    path = tmp_path / "cfg.py"
    path.write_text("train_cfg = dict(max_iters=4)\n")
    args = argparse.Namespace(config=str(path), launcher="none", work_dir=str(tmp_path),
                              cfg_options={"train_cfg.max_iter": 2})
    with pytest.warns(UserWarning, match=r"train_cfg\.max_iter: .*'max_iters'") as record:
        cfg = load_config(args)
    assert len(record) == 1
    assert cfg.train_cfg == dict(max_iters=4, max_iter=2)


def test_files_that_are_not_checkpoints_are_named(tmp_path: Path) -> None:
    empty, text = tmp_path / "empty.pth", tmp_path / "notes.pth"
    empty.write_bytes(b"")
    text.write_text("epoch 12: mAP 0.31\n")
    good, legacy, cut = tmp_path / "good.pth", tmp_path / "legacy.pth", tmp_path / "cut.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    torch.save({"state_dict": {"w": torch.ones(3)}}, legacy,
               _use_new_zipfile_serialization=False)
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"^checkpoint {empty} is empty \(0 bytes\)"):
        check_checkpoint_file(str(empty))
    with pytest.raises(ValueError, match=rf"^checkpoint {text} is not a PyTorch checkpoint .*"
                                         r"it starts with b'epoch 12: mAP"):
        check_checkpoint_file(str(text))
    with pytest.raises(ValueError, match=rf"^checkpoint {cut} .*a truncated zip archive"):
        check_checkpoint_file(str(cut))
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'nope.pth'} does not"):
        check_checkpoint_file(str(tmp_path / "nope.pth"))
    assert zipfile.is_zipfile(good) and not zipfile.is_zipfile(legacy)
    for path in (good, legacy):  # both formats of torch.save pass, and torch reads them
        check_checkpoint_file(str(path))
        torch.testing.assert_close(torch.load(path)["state_dict"]["w"], torch.ones(3))


def test_resume_auto_without_checkpoint_starts_anew(tmp_path: Path) -> None:
    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from="pretrained.pth"))
    with pytest.warns(UserWarning, match=r"--resume: no checkpoint to resume from in .*"
                                         r"starting a new training"):
        apply_resume(cfg, "auto")
    # As without --resume: the config's initial weights are kept.
    assert cfg.resume is False and cfg.load_from == "pretrained.pth"
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_8.pth"))
    apply_resume(cfg, "auto")
    assert cfg.resume is True and cfg.load_from == str(tmp_path / "iter_8.pth")


# ---------------------------------------------------------------------------------------------
# Item 13: copy-paste into a 16-bit image; a NaN detection score.


def test_copy_paste_refuses_16_bit_images_and_takes_float_ones(tiny_root: Path) -> None:
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    dataset = DATASETS.build(coco_cfg(tiny_root))
    paste = RareClassCopyPaste(dataset=coco_cfg(tiny_root), freq_thr=None, num_objects=1,
                               scale_range=(1.0, 1.0), flip_prob=0.0, blend="rect",
                               occlusion_thr=1.0, seed=0)
    sample = loaded(dataset, 0)
    wide = dict(sample, img=sample["img"].astype(np.uint16) * 257)
    with pytest.raises(ValueError, match=rf"image {sample['img_path']} is uint16, but the crops "
                                         r"of the bank are uint8.*8-bit"):
        paste(wide)
    # Float pixels on the 0-255 scale (after PhotoMetricDistortion): the crop shows unchanged.
    out = paste(dict(sample, img=sample["img"].astype(np.float32)))
    x0, y0, x1, y1 = out["gt_bboxes"].numpy()[-1].astype(int)
    crops = [paste.bank.crop(k)[0] for k in range(len(paste.bank))]
    assert out["img"].dtype == np.float32
    assert any(np.array_equal(out["img"][y0:y1, x0:x1], c) for c in crops)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_score_names_the_image(tiny_root: Path, bad: float) -> None:
    ann = str(tiny_root / "annotations/val.json")
    coco = COCO(ann)
    metric = LongTailMetric(ann_file=ann, class_counts=[30, 10, 5, 2])
    metric.dataset_meta = {"classes": tuple(c["name"] for c in coco.loadCats(coco.getCatIds()))}
    inputs = metric_inputs(coco)
    sample = inputs[2][1][0]
    sample["pred_instances"]["scores"][0] = bad
    for batch, samples in inputs:
        metric.process(batch, samples)
    with pytest.raises(ValueError, match=rf"^image {sample['img_id']}: 1 of its \d+ detection "
                                         rf"scores are not finite \(detection 0: {bad}\)"):
        metric.evaluate(len(inputs))


# ---------------------------------------------------------------------------------------------
# End to end through tools/train.py and tools/test.py.


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def short_config(tmp_path: Path, tiny_root: Path, extra: str = "") -> Path:
    """The tiny demo config: 2 iterations, no validation, and ``extra`` settings."""
    base = write_config(tmp_path, tiny_root, "retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py",
                        max_iters=2)
    path = tmp_path / "short.py"
    path.write_text(f"_base_ = '{base}'\nval_dataloader = val_cfg = val_evaluator = None\n"
                    + extra)
    return path


#: A repeat-factor sampler over a repeat-factor wrapper, and no ``DatasetEpochHook``.
STACKED = """
train_dataloader = dict(
    sampler=dict(_delete_=True, type='RepeatFactorSampler', oversample_thr=0.5, seed=0),
    dataset=dict(_delete_=True, type='RepeatFactorDataset', oversample_thr=0.5, seed=0,
                 dataset={{_base_.train_dataloader.dataset}}))
"""


@pytest.mark.slow
def test_train_warns_once_about_each_silent_misconfiguration(tmp_path: Path,
                                                            tiny_root: Path) -> None:
    proc = run_tool("tools/train.py", short_config(tmp_path, tiny_root, STACKED), "--work-dir",
                    tmp_path / "work", "--cfg-options", "randomnes.seed=3")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert log.count("no DatasetEpochHook calls it") == 1
    assert log.count("the sampler RepeatFactorSampler re-samples RepeatFactorDataset") == 1
    assert log.count("--cfg-options randomnes.seed: the config has no key 'randomnes'") == 1
    assert (tmp_path / "work" / "iter_2.pth").exists()


@pytest.fixture(scope="module")
def resumed_into_empty(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path
                       ) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """``tools/train.py --resume`` into an empty work folder: the run, its folder, its config."""
    tmp = tmp_path_factory.mktemp("resume")
    cfg = short_config(tmp, tiny_root)
    work = tmp / "work"
    return run_tool("tools/train.py", cfg, "--work-dir", work, "--resume"), work, cfg


@pytest.mark.slow
def test_resume_into_empty_work_dir_warns_and_trains_anew(
        resumed_into_empty: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    proc, work, _ = resumed_into_empty
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert log.count(f"--resume: no checkpoint to resume from in {work}") == 1
    assert "Auto resumed from the latest checkpoint None" not in log
    assert (work / "iter_2.pth").exists() and (work / "last_checkpoint").exists()


@pytest.mark.slow
def test_test_tool_refuses_a_checkpoint_of_other_classes(
        resumed_into_empty: tuple[subprocess.CompletedProcess[str], Path, Path],
        tmp_path: Path) -> None:
    _, work, cfg = resumed_into_empty
    checkpoint = work / "iter_2.pth"
    proc = run_tool("tools/test.py", cfg, checkpoint, "--work-dir", tmp_path,
                    "--cfg-options", "model.bbox_head.num_classes=3")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # RetinaHead: 9 anchors per location times num_classes outputs, over 64 channels.
    assert f"ValueError: checkpoint {checkpoint} does not fit the config's model: " \
           f"bbox_head.retina_cls.weight has shape [{9 * TINY.num_classes}, 64, 3, 3] in the " \
           "checkpoint and [27, 64, 3, 3] in the model" in log
    assert f"trained on {TINY.num_classes} classes" in log
    assert "the config's model has num_classes=3" in log
    assert not list(tmp_path.glob("*/long_tail.json"))  # refused before any evaluation


@pytest.mark.slow
@pytest.mark.parametrize(("tool", "content", "match"), [
    ("test", b"", "is empty (0 bytes)"),
    ("train", b"epoch 12: mAP 0.31\n", "is not a PyTorch checkpoint"),
])
def test_tools_name_a_checkpoint_file_they_cannot_read(tmp_path: Path, tiny_root: Path,
                                                       tool: str, content: bytes,
                                                       match: str) -> None:
    cfg = write_config(tmp_path, tiny_root, "retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py")
    bad = tmp_path / "model.pth"
    bad.write_bytes(content)
    args = [cfg, bad] if tool == "test" else [cfg, "--resume", bad]
    proc = run_tool(f"tools/{tool}.py", *args, "--work-dir", tmp_path / "work")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"ValueError: checkpoint {bad} {match}" in log
    assert "EOFError" not in log and "UnpicklingError" not in log
