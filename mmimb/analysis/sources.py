"""Where the analysis tool reads a training set from: a config, a json file or a VOC folder.

- an mmengine **config** (``.py``): its ``train_dataloader.dataset`` is built with mmdet's
  ``DATASETS`` (after ``import mmimb``), without its pipeline; re-sampling wrappers
  (``RepeatFactorDataset``, ``ClassBalancedDataset``) are peeled off and, with a re-sampling
  ``train_dataloader.sampler``, returned as re-sampling configs;
- a **COCO** or **LVIS** json, or an **LVIS category-info** json (counts only);
- a **Pascal VOC** folder (``Annotations/`` + ``ImageSets/Main/``), one split of it.

Every path ends in :mod:`mmimb.stats`, which does the counting.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mmimb.analysis.resampling import RESAMPLING_TYPES, RESAMPLING_WRAPPERS
from mmimb.analysis.voc import read_voc
from mmimb.evaluation.annotations import (
    AnnotationIssues,
    category_frequency,
    check_coco,
    is_cat_info,
    load_json,
    stats_from_cat_info,
)
from mmimb.stats import ClassStats, ImageLabels, image_labels_from_coco, image_labels_from_dataset

#: Wrappers that only transform images; the analysis reads the dataset inside.
PASS_THROUGH_WRAPPERS: tuple[str, ...] = ("MultiImageMixDataset",)


@dataclass(frozen=True)
class DatasetSource:
    """A training set's statistics and what came with them.

    Attributes:
        name: what was read (path, and split).
        kind: ``'config'``, ``'coco'``, ``'lvis'``, ``'lvis-cat-info'`` or ``'voc'``.
        stats: per-class counts.
        image_labels: per-image labels (None for category-info files, which have none).
        frequency: LVIS ``frequency`` letters, when the file has them.
        issues: problems found in the annotations.
        resampling: sampler / wrapper configs found in a config.
        notes: remarks for the report.
    """

    name: str
    kind: str
    stats: ClassStats
    image_labels: ImageLabels | None
    frequency: tuple[str, ...] | None
    issues: AnnotationIssues
    resampling: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = field(default=())


class _Progress:
    """A dataset view that advances a progress bar each time an image's annotation is read."""

    def __init__(self, dataset: Any, bar: tqdm) -> None:
        self._inner = dataset
        self._bar = bar

    @property
    def metainfo(self) -> dict[str, Any]:
        return self._inner.metainfo

    def full_init(self) -> None:
        self._inner.full_init()

    def __len__(self) -> int:
        return len(self._inner)

    def get_data_info(self, idx: int) -> dict[str, Any]:
        self._bar.update(1)
        return self._inner.get_data_info(idx)


def _strip_pipelines(cfg: Any) -> None:
    """Drop every ``pipeline`` (no image is loaded; its transforms need not be built)."""
    if isinstance(cfg, dict):
        if "pipeline" in cfg:
            cfg["pipeline"] = []
        for value in cfg.values():
            _strip_pipelines(value)
    elif isinstance(cfg, list | tuple):
        for value in cfg:
            _strip_pipelines(value)


def load_config_source(path: str | Path, cfg_options: dict[str, Any] | None = None,
                       progress: bool = True) -> DatasetSource:
    """Build the training set of an mmengine config and read its labels.

    Args:
        path: the config file.
        cfg_options: overrides, as ``--cfg-options`` of ``tools/train.py``.
        progress: show a progress bar while the annotations are read.

    Raises:
        ValueError: if the config has no ``train_dataloader.dataset``.
    """
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import mmimb  # noqa: F401  (registers mmimb's datasets and wrappers)

    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    loader = cfg.get("train_dataloader")
    if not loader or "dataset" not in loader:
        raise ValueError(f"config {path} has no train_dataloader.dataset to analyse")
    dataset_cfg = copy.deepcopy(loader["dataset"])
    resampling: list[dict[str, Any]] = []
    while dataset_cfg.get("type") in RESAMPLING_WRAPPERS + PASS_THROUGH_WRAPPERS:
        if dataset_cfg["type"] in RESAMPLING_WRAPPERS:
            resampling.append({k: v for k, v in dataset_cfg.items() if k != "dataset"})
        dataset_cfg = dataset_cfg["dataset"]
    sampler = dict(loader.get("sampler") or {})
    if sampler.get("type") in RESAMPLING_TYPES:
        resampling.append(sampler)
    _strip_pipelines(dataset_cfg)
    dataset = DATASETS.build(dataset_cfg)
    dataset.full_init()
    with tqdm(total=len(dataset), desc=f"reading {Path(path).name}", unit="img",
              disable=not progress) as bar:
        labels = image_labels_from_dataset(_Progress(dataset, bar))
    classes = tuple(dataset.metainfo.get("classes", ()))
    stats = ClassStats.from_image_labels(labels, classes)
    notes: tuple[str, ...] = ()
    if len(resampling) > 1:
        notes = ("the config stacks several re-sampling methods; each effect is shown alone, "
                 "relative to the raw dataset",)
    return DatasetSource(f"{path} (train_dataloader.dataset: {dataset_cfg.get('type')})",
                         "config", stats, labels, None, AnnotationIssues(str(path)),
                         tuple(resampling), notes)


def load_json_source(path: str | Path, num_images: int | None = None) -> DatasetSource:
    """Read a COCO json, an LVIS json or an LVIS category-info json.

    Args:
        path: the file.
        num_images: for category-info files only, the number of training images (which they
            do not record; LVIS v1 train has 100,170).

    Raises:
        ValueError: on an invalid file (see :func:`mmimb.evaluation.check_coco`).
    """
    data = load_json(path)
    if is_cat_info(data):
        src = stats_from_cat_info(data, str(path), num_images)
        notes: tuple[str, ...] = ("a category-info file has per-class counts only: per-image "
                                  "labels and images without boxes are unknown",)
        if not src.num_images_known:
            notes += (f"{path} does not record the number of training images; frequencies use "
                      f"its largest image_count ({src.stats.num_images}) as a lower bound: pass "
                      "--num-images (LVIS v1 train: 100170)",)
        return DatasetSource(str(path), src.kind, src.stats, None, src.frequency, src.issues,
                             notes=notes)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO/LVIS json object or an LVIS category-info "
                         f"list, got a {type(data).__name__}")
    issues = check_coco(data, str(path))
    labels, names = image_labels_from_coco(data)
    frequency = category_frequency(data["categories"])
    lvis = frequency is not None or any("neg_category_ids" in img for img in data["images"][:1])
    return DatasetSource(str(path), "lvis" if lvis else "coco",
                         ClassStats.from_image_labels(labels, names), labels, frequency, issues)


def load_source(path: str | Path, split: str | None = None, num_images: int | None = None,
                cfg_options: dict[str, Any] | None = None,
                progress: bool = True) -> DatasetSource:
    """Read a training set from a config, a json file or a VOC folder (see module docstring).

    Args:
        path: the source.
        split: VOC split (``ImageSets/Main/{split}.txt``); default ``trainval``.
        num_images: training images, for LVIS category-info files.
        cfg_options: config overrides.
        progress: show progress bars on long passes.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is none of the supported kinds, or invalid.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if path.is_dir():
        voc = read_voc(path, split or "trainval", progress=progress)
        return DatasetSource(f"{path} ({split or 'trainval'})", "voc", voc.stats,
                             voc.image_labels, None, voc.issues,
                             notes=(f"{voc.num_difficult} objects marked difficult are not "
                                    "counted (mmdet ignores them)",) if voc.num_difficult else ())
    if split is not None:
        raise ValueError(f"split={split!r} applies to VOC folders only, not to {path}")
    if path.suffix == ".py":
        return load_config_source(path, cfg_options, progress)
    if path.suffix == ".json":
        return load_json_source(path, num_images)
    raise ValueError(f"{path}: expected a config (.py), an annotation file (.json) or a Pascal "
                     "VOC folder")

