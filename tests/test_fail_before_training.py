"""Wrong evaluation and loss settings fail before training, naming the setting (issue 14, 2).

Each case runs the ``main`` of ``tools/train.py`` (or ``tools/test.py``) with its command line,
in this process (the tools' code path without paying mmdet's import once per case), on the tiny
synthetic set with a short schedule, and checks three things: the run fails, the message names
the setting, its value and the fix, and no checkpoint was written (the failure came before the
first iteration, not after training and a full validation pass as it did).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from mmimb.evaluation import LongTailMetric
from tests.conftest import REPO, TINY
from tests.test_misconfig import short_config
from tests.test_train_e2e import write_config


def run_main(monkeypatch: pytest.MonkeyPatch, tool: str, *args: str | Path) -> None:
    """Run ``tools/<tool>.py``'s ``main`` with the command line ``args``."""
    main = runpy.run_path(str(REPO / "tools" / f"{tool}.py"), run_name="tool")["main"]
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}.py", *map(str, args)])
    main()


def evaluator_config(tmp_path: Path, tiny_root: Path, evaluator: str) -> Path:
    """The tiny RetinaNet, 2 iterations, validated with ``LongTailMetric(**evaluator)``."""
    base = write_config(tmp_path, tiny_root, "retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py",
                        max_iters=2)
    path = tmp_path / "eval.py"
    path.write_text(f"_base_ = '{base}'\nval_evaluator = dict({evaluator})\n"
                    "test_evaluator = val_evaluator\n")
    return path


def other_classes_json(path: Path) -> Path:
    """A valid COCO training file whose classes are not the synthetic set's."""
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
                         "area": 9, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "zebra"}, {"id": 2, "name": "giraffe"}]}))
    return path


def not_json(path: Path) -> Path:
    path.write_text("image,label\n1,zebra\n")
    return path


CASES = {
    "missing train_ann_file": (
        lambda tmp: f"train_ann_file='{tmp / 'trian.json'}', class_counts=None",
        lambda tmp: [f"train_ann_file='{tmp / 'trian.json'}'", "does not exist"]),
    "train_ann_file of other classes": (
        lambda tmp: f"train_ann_file='{other_classes_json(tmp / 'zoo.json')}', "
                    "class_counts=None",
        lambda tmp: [f"train_ann_file='{tmp / 'zoo.json'}'", "are not in the training set's "
                     "classes ['zebra', 'giraffe']", "give the training annotation"]),
    "train_ann_file not JSON": (
        lambda tmp: f"train_ann_file='{not_json(tmp / 'train.csv')}', class_counts=None",
        lambda tmp: [f"annotation file '{tmp / 'train.csv'}' is not JSON"]),
    "class_counts of the wrong length": (
        lambda tmp: "train_ann_file=None, class_counts=[5, 3, 1]",
        lambda tmp: [f"class_counts has 3 entries (shape (3,)) but num_classes={TINY.num_classes}",
                     "give one training count >= 0 per evaluated class"]),
    "negative class_counts": (
        lambda tmp: "train_ann_file=None, class_counts=[-1] + [4] * "
                    f"{TINY.num_classes - 1}",
        lambda tmp: ["class_counts must be >= 0; classes [0] have [-1.0]",
                     "give one training count >= 0 per evaluated class"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_val_evaluator_setting_fails_before_training(
        tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    setting, expected = CASES[case]
    work = tmp_path / "work"
    cfg = evaluator_config(tmp_path, tiny_root, setting(tmp_path))
    with pytest.raises(ValueError, match=r"^val_evaluator \(LongTailMetric\): ") as err:
        run_main(monkeypatch, "train", cfg, "--work-dir", work)
    for text in expected(tmp_path):
        assert text in str(err.value), str(err.value)
    assert not list(work.rglob("*.pth")), "failed after training"


def test_check_setup_accepts_what_evaluation_accepts(tmp_path: Path) -> None:
    """The early check refuses nothing that the evaluation itself would take."""
    classes = ("zebra", "giraffe")
    ok = [LongTailMetric(class_counts=[3, 1]),
          LongTailMetric(train_ann_file=str(other_classes_json(tmp_path / "zoo.json")))]
    for metric in ok:
        metric.check_setup(classes, stats_hook=False)
        assert metric._train_counts(classes).tolist() in ([3, 1], [1, 0])
    LongTailMetric(class_counts="auto").check_setup(classes, stats_hook=True)
    with pytest.raises(ValueError, match="no ClassStatsHook"):
        LongTailMetric(class_counts="auto").check_setup(classes, stats_hook=False)


@pytest.mark.slow
def test_test_tool_with_auto_counts_and_no_stats_hook_fails_before_inference(
        tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = short_config(tmp_path, tiny_root)
    work = tmp_path / "work"
    run_main(monkeypatch, "train", cfg, "--work-dir", work)
    # The test evaluator of the demo config waits for 'auto' counts; drop the hook.
    with pytest.raises(ValueError) as err:
        run_main(monkeypatch, "test", cfg, work / "iter_2.pth", "--work-dir", tmp_path / "test",
                 "--cfg-options", "custom_hooks=[]")
    message = str(err.value)
    assert message.startswith("test_evaluator (LongTailMetric): class_counts='auto' waits for "
                              "the training set's statistics, but the runner has no "
                              "ClassStatsHook"), message
    assert "custom_hooks=[dict(type='ClassStatsHook')]" in message
    assert not list((tmp_path / "test").rglob("*.json")), "refused after inference"
