"""The embedded synthetic long-tail dataset: shape of the distribution, determinism, errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from mmdet.registry import DATASETS

from mmimb.datasets.synthetic import SyntheticConfig, class_names, generate, train_counts
from mmimb.stats import class_stats_from_coco
from tests.conftest import TINY


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_default_config_is_long_tailed_and_confusable() -> None:
    cfg = SyntheticConfig()
    counts = train_counts(cfg)
    assert cfg.num_classes >= 10
    assert counts[0] / counts[-1] >= 100
    assert np.all(np.diff(counts) <= 0)
    # Power law: log(count) is linear in log(rank), slope -ln(ratio)/ln(C).
    slope = np.polyfit(np.log(np.arange(1, 13)), np.log(counts), 1)[0]
    assert slope == pytest.approx(-np.log(100) / np.log(12), rel=0.02)
    names = class_names(cfg.num_classes)
    shapes = [n.split("_")[1] for n in names]
    head_shapes = set(shapes[:4])
    # Every one of the four rarest classes has the shape of a frequent class, another texture.
    for name in names[-4:]:
        texture, shape = name.split("_")
        assert shape in head_shapes and texture != "solid"


def test_default_dataset_counts(tmp_path: Path) -> None:
    root = generate(tmp_path / "lt", SyntheticConfig())
    train = class_stats_from_coco(root / "annotations/train.json")
    val = class_stats_from_coco(root / "annotations/val.json")
    assert train.instance_counts.tolist() == train_counts(SyntheticConfig()).tolist()
    assert val.instance_counts.min() >= 20
    assert train.num_empty_images > 0  # background-only images exist
    coco = json.loads((root / "annotations/train.json").read_text())
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128


def test_generation_is_deterministic_and_cached(tmp_path: Path, tiny_root: Path) -> None:
    again = generate(tmp_path / "again", TINY)
    assert tree_digest(again) == tree_digest(tiny_root)
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*.png")}
    assert generate(again, TINY) == again  # reused, nothing rewritten
    assert before == {p: p.stat().st_mtime_ns for p in again.rglob("*.png")}
    other = generate(tmp_path / "other", replace(TINY, seed=2))
    assert tree_digest(other) != tree_digest(tiny_root)


def test_root_with_other_arguments_is_not_overwritten(tiny_root: Path) -> None:
    with pytest.raises(ValueError, match="generated with"):
        generate(tiny_root, replace(TINY, seed=99))


@pytest.mark.parametrize("kwargs, name", [
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 19}, "num_classes"),
    ({"imbalance_ratio": 0.5}, "imbalance_ratio"),
    ({"max_instances": 10, "imbalance_ratio": 100}, "max_instances"),
    ({"max_size": 200}, "max_size"),
    ({"min_size": 30, "max_size": 20}, "min_size"),
    ({"min_size": 2}, "min_size"),
    ({"val_per_class": 0}, "val_per_class"),
    ({"max_objects": 0}, "max_objects"),
    ({"empty_fraction": 1.0}, "empty_fraction"),
])
def test_invalid_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SyntheticConfig(**kwargs)


def test_missing_folder_names_the_command(tmp_path: Path) -> None:
    import mmimb  # noqa: F401

    dataset = DATASETS.build(dict(type="SyntheticLongTailDataset", data_root=str(tmp_path / "x"),
                                  generate_if_missing=False, lazy_init=True, pipeline=[]))
    with pytest.raises(FileNotFoundError, match="tools/make_synthetic_data.py"):
        dataset.full_init()


def test_dataset_generates_on_first_use(tmp_path: Path) -> None:
    import mmimb  # noqa: F401

    dataset = DATASETS.build(dict(type="SyntheticLongTailDataset", data_root=str(tmp_path / "d"),
                                  synthetic=asdict(TINY), split="val", pipeline=[]))
    assert dataset.metainfo["classes"] == class_names(TINY.num_classes)
    labels = [i["bbox_label"] for k in range(len(dataset))
              for i in dataset.get_data_info(k)["instances"]]
    assert np.bincount(labels).tolist() == [TINY.val_per_class] * TINY.num_classes
