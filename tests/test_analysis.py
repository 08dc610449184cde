"""The analysis package: imbalance measures, recommendations, expected counts after re-sampling
(against the samplers and mmengine's wrapper), the VOC reader (against mmdet's VOCDataset), the
command line on real data, and the plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from mmimb.analysis import (
    gini,
    imbalance_ratio,
    load_source,
    read_voc,
    recommend_cb_beta,
    recommend_repeat_threshold,
    resampling_effect,
)
from mmimb.analysis.cli import main
from mmimb.analysis.plots import plot_ap_difference
from mmimb.analysis.summary import effective_ratio
from mmimb.evaluation import evaluate_bbox, load_result, summarize_long_tail, write_report
from mmimb.samplers import ClassAwarePowerSampler, RepeatFactorSampler, UndersampleSampler
from mmimb.stats import (
    ClassStats,
    ImageLabels,
    class_repeat_factors,
    class_stats,
    class_stats_from_coco,
    image_labels_from_coco,
    image_labels_from_dataset,
)
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "data"
BCCD = SHARED / "bccd" / "BCCD"
LVIS_INFO = SHARED / "lvis_v1_train_cat_info.json"
needs_bccd = pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd is missing")
needs_lvis = pytest.mark.skipif(not LVIS_INFO.is_file(), reason="LVIS cat-info file is missing")


def random_labels(rng: np.random.Generator, num_images: int = 60,
                  num_classes: int = 5) -> ImageLabels:
    """Multi-label images with a long-tailed class distribution, some without boxes."""
    p = 0.6 ** np.arange(num_classes)
    per_image = [rng.choice(num_classes, rng.integers(0, 5), p=p / p.sum()).tolist()
                 for _ in range(num_images)]
    return ImageLabels.from_lists(per_image, num_classes)


def test_gini_and_imbalance_ratio_against_definitions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.integers(0, 1000, rng.integers(2, 30)).astype(float)
        pairwise = sum(abs(a - b) for a, b in combinations(x, 2)) * 2
        assert gini(x) == pytest.approx(pairwise / (2 * len(x) ** 2 * x.mean()))
        assert imbalance_ratio(x) == pytest.approx(x[x > 0].max() / x[x > 0].min())
    assert gini([7, 7, 7]) == 0.0
    assert gini([0, 0, 0, 5]) == pytest.approx(1 - 1 / 4)
    assert imbalance_ratio([0, 3]) == 1.0
    with pytest.raises(ValueError, match="gini"):
        gini([])


def test_recommended_beta_gives_the_target_ratio() -> None:
    counts = np.array([4155, 372, 361, 0])
    rec = recommend_cb_beta(counts)
    assert effective_ratio(4155, 361, rec.value) == pytest.approx(np.sqrt(4155 / 361), rel=1e-6)
    assert "11.51" in rec.reason
    asked = recommend_cb_beta(counts, target_ratio=2.0)
    assert effective_ratio(4155, 361, asked.value) == pytest.approx(2.0, rel=1e-6)
    assert asked.value < rec.value  # a smaller ratio needs less re-weighting
    assert recommend_cb_beta([10, 10]).value == 0.0
    with pytest.raises(ValueError, match="target_ratio must lie in"):
        recommend_cb_beta(counts, target_ratio=20.0)


@needs_lvis
def test_repeat_threshold_reproduces_lvis_and_caps_at_the_head() -> None:
    lvis = load_source(LVIS_INFO, num_images=100170)
    rec = recommend_repeat_threshold(lvis.stats)
    assert rec.value == pytest.approx(100 / 100170)  # LVIS's t = 0.001: one image, 10 repeats
    factors = class_repeat_factors(lvis.stats, rec.value)
    assert factors.max() == pytest.approx(10.0)
    assert "796 of 1203 classes over-sampled" in rec.reason
    # Little image imbalance: t is capped at the head class's frequency, which is not repeated.
    stats = ClassStats(np.array([500, 40, 30]), np.array([90, 40, 30]), 100, 0, ("a", "b", "c"))
    capped = recommend_repeat_threshold(stats)
    assert capped.value == pytest.approx(0.9)
    assert class_repeat_factors(stats, capped.value).tolist() == pytest.approx(
        [1.0, np.sqrt(0.9 / 0.4), np.sqrt(0.9 / 0.3)])
    assert "capped" in capped.reason and "combine it with loss re-weighting" in capped.reason
    with pytest.raises(ValueError, match="max_repeat must be > 1"):
        recommend_repeat_threshold(stats, max_repeat=1.0)


def test_expected_counts_against_a_loop_and_the_identity() -> None:
    labels = random_labels(np.random.default_rng(1))
    draws = np.random.default_rng(2).uniform(0, 3, labels.num_images)
    instances, images = labels.class_counts(draws)
    ref_inst, ref_img = np.zeros(5), np.zeros(5)
    for i in range(labels.num_images):
        mine = labels.labels[labels.offsets[i]:labels.offsets[i + 1]]
        for c in mine:
            ref_inst[c] += draws[i]
        for c in set(mine.tolist()):
            ref_img[c] += draws[i]
    np.testing.assert_allclose(instances, ref_inst)
    np.testing.assert_allclose(images, ref_img)
    stats = ClassStats.from_image_labels(labels)
    ones = labels.class_counts(np.ones(labels.num_images))
    np.testing.assert_array_equal(ones[0], stats.instance_counts)
    np.testing.assert_array_equal(ones[1], stats.image_counts)


def test_resampling_effects_match_the_samplers_and_mmengine(tiny_root: Path) -> None:
    from mmdet.datasets import CocoDataset
    from mmengine.dataset import ClassBalancedDataset

    classes = tuple(c["name"] for c in json.loads(
        (tiny_root / "annotations/train.json").read_text())["categories"])
    data = CocoDataset(data_root=str(tiny_root), ann_file="annotations/train.json",
                       data_prefix={"img": "train/"}, metainfo={"classes": classes},
                       filter_cfg={"filter_empty_gt": False}, pipeline=[])
    labels = image_labels_from_dataset(data)
    stats = ClassStats.from_image_labels(labels, classes)
    k = len(classes)

    rfs = RepeatFactorSampler(data, oversample_thr=0.3, seed=0)
    effect = resampling_effect({"type": "RepeatFactorSampler", "oversample_thr": 0.3}, labels,
                               stats)
    np.testing.assert_allclose(effect.instances, labels.class_counts(rfs.repeat_factors)[0])
    assert effect.epoch_length == pytest.approx(rfs.expected_length)
    assert (effect.instances > stats.instance_counts).sum() >= 2, "the case must re-sample"
    # Over many epochs, the sampler's average class counts approach the expectation.
    drawn = np.mean([np.bincount(labels.subset(rfs.epoch_indices(e)).labels, minlength=k)
                     for e in range(300)], axis=0)
    np.testing.assert_allclose(drawn, effect.instances, rtol=0.05)

    # mmengine's ClassBalancedDataset repeats image i ceil(r_i) times.
    cbd = ClassBalancedDataset(data, oversample_thr=0.3)
    mm = ClassStats.from_image_labels(labels.subset(np.array(cbd.repeat_indices)))
    effect = resampling_effect({"type": "ClassBalancedDataset", "oversample_thr": 0.3}, labels,
                               stats)
    np.testing.assert_array_equal(effect.instances, mm.instance_counts)
    np.testing.assert_array_equal(effect.images, mm.image_counts)
    assert effect.epoch_length == len(cbd)

    cas = ClassAwarePowerSampler(data, power=0.5, seed=0)
    effect = resampling_effect({"type": "ClassAwarePowerSampler", "power": 0.5}, labels, stats)
    np.testing.assert_allclose(effect.images,
                               labels.class_counts(cas.expected_counts)[1])

    under = UndersampleSampler(data, sampling_strategy=0.5, seed=0)
    effect = resampling_effect({"type": "UndersampleSampler", "sampling_strategy": 0.5}, labels,
                               stats)
    assert not effect.exact and np.isnan(effect.instances).all()
    assert (under.kept_counts(0) >= effect.images).all()  # targets are a lower bound

    with pytest.raises(ValueError, match="supported"):
        resampling_effect({"type": "DefaultSampler"}, labels, stats)
    with pytest.raises(ValueError, match="has no argument"):
        resampling_effect({"type": "RepeatFactorSampler", "thr": 0.1}, labels, stats)
    with pytest.raises(ValueError, match="oversample_thr must be"):
        resampling_effect({"type": "RepeatFactorDataset", "oversample_thr": -1}, labels, stats)


@needs_bccd
def test_voc_reader_agrees_with_mmdet_voc_dataset() -> None:
    from mmdet.datasets import VOCDataset

    everything = read_voc(BCCD, split=None)
    # The figures of the shared data's README: 364 images, RBC 4155, WBC 372, Platelets 361.
    assert everything.stats.num_images == 364
    assert dict(zip(everything.classes, everything.stats.instance_counts.tolist(),
                    strict=True)) == {"Platelets": 361, "RBC": 4155, "WBC": 372}
    assert everything.issues.num_degenerate_boxes == 2
    val = read_voc(BCCD, "val")
    mmdet_val = VOCDataset(data_root=str(BCCD.parent), ann_file="BCCD/ImageSets/Main/val.txt",
                           data_prefix={"sub_data_root": "BCCD/"},
                           metainfo={"classes": val.classes}, test_mode=True, pipeline=[])
    reference = class_stats(mmdet_val)
    np.testing.assert_array_equal(val.stats.instance_counts, reference.instance_counts)
    np.testing.assert_array_equal(val.stats.image_counts, reference.image_counts)
    assert val.issues.num_degenerate_boxes == 1
    assert "BloodImage_00338" in val.issues.summary()


@needs_bccd
def test_cli_on_bccd_writes_table_plots_and_resampling(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    code = main(["dataset", str(BCCD), "--split", "train", "--count-by", "instance",
                 "--group-by", "quantile", "--resample", "type=RepeatFactorSampler",
                 "oversample_thr=auto", "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    train = read_voc(BCCD, "train")
    order = np.argsort(-train.stats.instance_counts)
    rows = list(csv.DictReader((tmp_path / "class_stats.csv").open()))
    assert [r["class"] for r in rows] == [train.classes[c] for c in order]
    assert [int(r["instances"]) for r in rows] == train.stats.instance_counts[order].tolist()
    assert [r["group"] for r in rows] == ["frequent", "common", "rare"]
    assert "1 box(es) of zero or negative size" in text  # BloodImage_00343
    report = json.loads((tmp_path / "class_stats.json").read_text())
    t = report["recommendations"]["oversample_thr"]["value"]
    assert t == pytest.approx(204 / 205)  # capped at the head class WBC's image frequency
    effect = resampling_effect({"type": "RepeatFactorSampler", "oversample_thr": t},
                               train.image_labels, train.stats)
    resampled = list(csv.DictReader((tmp_path / "resampling_0.csv").open()))
    np.testing.assert_allclose([float(r["expected_instances"]) for r in resampled],
                               effect.instances, atol=1e-3)
    for name in ("long_tail.png", "resampling_0.png"):
        image = imread(tmp_path / name)
        # about 7 x 3.6 inches at 100 dpi, trimmed to what is drawn (bbox_inches="tight")
        assert image.shape[0] > 250 and image.shape[1] > 500 and image.std() > 0.05
    assert (tmp_path / "class_stats.md").read_text().startswith("**")


@needs_lvis
def test_cli_on_lvis_cat_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dataset", str(LVIS_INFO), "--out-dir", str(tmp_path), "--max-rows", "6"]) == 0
    text = capsys.readouterr().out
    assert "337 rare, 461 common, 405 frequent" in text
    assert "pass --num-images" in text  # the file does not know the number of images
    # table header, 3 head + '...' + 3 tail classes, measures header + 2 rows
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + 7 + 3
    rows = list(csv.DictReader((tmp_path / "class_stats.csv").open()))
    assert len(rows) == 1203 and rows[-1]["images"] == "1"
    # Re-sampling needs per-image labels, which a category-info file does not have.
    assert main(["dataset", str(LVIS_INFO), "--out-dir", str(tmp_path),
                 "--resample", "type=RepeatFactorSampler"]) == 1
    assert "needs per-image labels" in capsys.readouterr().err


def test_cli_on_a_config_with_wrapper_and_sampler(tmp_path: Path, tiny_root: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    classes = tuple(c["name"] for c in json.loads(
        (tiny_root / "annotations/train.json").read_text())["categories"])
    cfg = tmp_path / "cfg.py"
    # The pipeline is never built: the analysis reads annotations only.
    cfg.write_text(f"""
train_dataloader = dict(
    sampler=dict(type='ClassAwarePowerSampler', power=0.5),
    dataset=dict(type='RepeatFactorDataset', oversample_thr=0.2,
                 dataset=dict(type='CocoDataset', data_root='{tiny_root}/',
                              ann_file='annotations/train.json', data_prefix=dict(img='train/'),
                              metainfo=dict(classes={classes!r}),
                              filter_cfg=dict(filter_empty_gt=False),
                              pipeline=[dict(type='NoSuchTransform')])))
""")
    source = load_source(cfg, progress=False)
    reference = class_stats_from_coco(tiny_root / "annotations/train.json")
    np.testing.assert_array_equal(source.stats.instance_counts, reference.instance_counts)
    assert [s["type"] for s in source.resampling] == ["RepeatFactorDataset",
                                                      "ClassAwarePowerSampler"]
    assert main(["dataset", str(cfg), "--out-dir", str(tmp_path), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "RepeatFactorDataset(oversample_thr=0.2" in text
    assert "ClassAwarePowerSampler(power=0.5" in text
    assert (tmp_path / "resampling_1.png").is_file()


def metric_report(tiny_root: Path, tmp_path: Path, shift: float) -> Path:
    """A long_tail.json of detections that are the ground truth shifted by ``shift`` pixels."""
    from pycocotools.coco import COCO
    coco = COCO(str(tiny_root / "annotations/val.json"))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "bbox": [a["bbox"][0] + shift * (a["category_id"] % 2), *a["bbox"][1:]]}
            for a in coco.dataset["annotations"]]
    labels, _ = image_labels_from_coco(tiny_root / "annotations/train.json")
    counts = ClassStats.from_image_labels(labels).image_counts
    result = summarize_long_tail(evaluate_bbox(coco, dets, coco.getCatIds()),
                                 [c["name"] for c in coco.loadCats(coco.getCatIds())], counts,
                                 np.array([2, 1, 1, 0]))
    return write_report(result, tmp_path / f"shift{shift}")


def test_results_plots_and_difference(tmp_path: Path, tiny_root: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    base, method = metric_report(tiny_root, tmp_path, 3.0), metric_report(tiny_root, tmp_path, 0)
    out = tmp_path / "plots"
    assert main(["results", str(method), "--baseline", str(base), "--out-dir", str(out),
                 "--labels", "shifted", "exact"]) == 0
    text = capsys.readouterr().out
    assert "| shifted |" in text and "| exact |" in text
    for name in ("ap_vs_frequency.png", "ap_difference.png"):
        assert imread(out / name).std() > 0.05
    other = load_result(method)
    other.classes[0]["name"] = "renamed"
    with pytest.raises(ValueError, match="different classes"):
        plot_ap_difference(load_result(base), other, tmp_path / "x.png")


@needs_bccd
def test_console_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("mmimb-analyze")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mmimb.analysis.cli"]
    proc = subprocess.run([*cmd, "dataset", str(BCCD), "--split", "val", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("**") and "87 images" in lines[0]
    assert "| 1 | WBC | 87 | 86 |" in proc.stdout  # sorted by images, as LVIS
    assert "reading BCCD val" in proc.stderr  # the progress bar
    assert (tmp_path / "long_tail.png").is_file()
