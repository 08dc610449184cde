"""Bad input to the metric and the analysis tool: a clear error, or a documented behaviour."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from mmdet.evaluation.metrics import CocoMetric
from pycocotools.coco import COCO

from mmimb.analysis import load_source, read_voc
from mmimb.analysis.cli import main
from mmimb.evaluation import LongTailMetric, evaluate_bbox, load_train_source
from tests.test_long_tail_metric import metric_inputs, run_metric


def val_json(tiny_root: Path) -> dict:
    return json.loads((tiny_root / "annotations/val.json").read_text())


def write(tmp_path: Path, data: object, name: str = "ann.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def classes_of(data: dict) -> tuple[str, ...]:
    return tuple(c["name"] for c in sorted(data["categories"], key=lambda c: c["id"]))


def test_unknown_category_ids_are_refused(tiny_root: Path, tmp_path: Path) -> None:
    data = val_json(tiny_root)
    data["annotations"][3]["category_id"] = 77
    path = write(tmp_path, data)
    ann_id = data["annotations"][3]["id"]
    with pytest.raises(ValueError, match=rf"unknown category ids.*\({ann_id}, 77\)"):
        LongTailMetric(ann_file=path, class_counts=[1, 2, 3, 4])
    # The same file as training annotation fails when the counts are read.
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            train_ann_file=path)
    with pytest.raises(ValueError, match="unknown category ids"):
        run_metric(metric, COCO(str(tiny_root / "annotations/val.json")), classes_of(data))
    with pytest.raises(ValueError, match="unknown category ids"):
        load_source(path)


def test_duplicate_image_ids_and_unknown_images_are_refused(tiny_root: Path,
                                                            tmp_path: Path) -> None:
    data = val_json(tiny_root)
    data["images"].append(dict(data["images"][2]))
    dup = write(tmp_path, data, "dup.json")
    with pytest.raises(ValueError, match=rf"duplicate image ids {data['images'][2]['id']}"):
        LongTailMetric(ann_file=dup, class_counts=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="duplicate image ids"):
        load_train_source(dup)
    assert main(["dataset", dup, "--out-dir", str(tmp_path)]) == 1  # exit status 1, no trace

    data = val_json(tiny_root)
    data["annotations"][0]["image_id"] = 12345
    with pytest.raises(ValueError, match=r"not in 'images'.*12345"):
        LongTailMetric(ann_file=write(tmp_path, data), class_counts=[1, 2, 3, 4])
    data = val_json(tiny_root)
    data["annotations"][0]["bbox"] = [1, 2, 3]
    with pytest.raises(ValueError, match="four"):
        LongTailMetric(ann_file=write(tmp_path, data), class_counts=[1, 2, 3, 4])


def degenerate_case(tiny_root: Path, tmp_path: Path) -> tuple[str, dict, list[dict]]:
    """The val split with one zero-width and one negative-height box (class of the first
    annotation), and predictions equal to every other box."""
    data = val_json(tiny_root)
    first = data["annotations"][0]
    bad = [dict(first, id=10_001, bbox=[5.0, 5.0, 0.0, 8.0], area=0.0),
           dict(first, id=10_002, bbox=[20.0, 5.0, 6.0, -3.0], area=-18.0)]
    data["annotations"] += bad
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
              "score": 1.0} for a in data["annotations"] if a["id"] < 10_001]
    return write(tmp_path, data), data, preds


@pytest.mark.parametrize("policy", ["keep", "ignore"])
def test_zero_and_negative_size_boxes_are_counted_and_reported(tiny_root: Path, tmp_path: Path,
                                                               policy: str) -> None:
    path, data, preds = degenerate_case(tiny_root, tmp_path)
    metric = LongTailMetric(ann_file=path, class_counts=[30, 10, 5, 2], degenerate_gt=policy,
                            out_dir=str(tmp_path / policy))
    run_metric(metric, COCO(path), classes_of(data), copy.deepcopy(preds))
    res = metric.result
    assert res is not None
    issue = res.issues["degenerate_gt_boxes"]
    assert "2 box(es) of zero or negative size" in issue and "annotation 10001" in issue
    assert "degenerate_gt_boxes" in (tmp_path / policy / "long_tail.md").read_text()
    k = sorted(c["id"] for c in data["categories"]).index(data["annotations"][0]["category_id"])
    row = res.classes[k]
    if policy == "keep":  # as pycocotools: the zero-width box can never be matched, a miss;
        # the negative-height one has a negative area, outside COCOeval's range: ignored.
        assert row["num_gt"] == 7 and row["R"] == pytest.approx(6 / 7)
        assert row["AP"] < 1.0 and res.confusion[k, -1] == 1
    else:  # marked crowd: neither a miss nor a match
        assert row["num_gt"] == 6 and row["AP"] == pytest.approx(1.0)
        assert res.confusion[k, -1] == 0
    assert all(r["AP"] == pytest.approx(1.0) for i, r in enumerate(res.classes) if i != k)


def test_degenerate_boxes_can_be_refused(tiny_root: Path, tmp_path: Path) -> None:
    path, _, _ = degenerate_case(tiny_root, tmp_path)
    with pytest.raises(ValueError, match="2 box.*degenerate_gt='error'"):
        LongTailMetric(ann_file=path, class_counts=[1, 2, 3, 4], degenerate_gt="error")


@pytest.mark.parametrize("label", [4, -1])
def test_predictions_of_classes_that_do_not_exist(tiny_root: Path, label: int) -> None:
    coco = COCO(str(tiny_root / "annotations/val.json"))
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            class_counts=[1, 2, 3, 4])
    metric.dataset_meta = {"classes": classes_of(coco.dataset)}
    inputs = metric_inputs(coco)
    inputs[1][1][0]["pred_instances"]["labels"][0] = label
    for batch, samples in inputs:
        metric.process(batch, samples)
    with pytest.raises(ValueError, match=rf"predicted label {label} is outside \[0, 4\)"):
        metric.evaluate(len(inputs))


def test_coco_results_of_unknown_categories_or_images(tiny_root: Path) -> None:
    coco = COCO(str(tiny_root / "annotations/val.json"))
    det = {"image_id": coco.getImgIds()[0], "category_id": 99, "bbox": [1, 1, 5, 5],
           "score": 0.5}
    with pytest.raises(ValueError, match=r"category_id\(s\) \[99\]"):
        evaluate_bbox(coco, [det], coco.getCatIds())
    with pytest.raises(ValueError, match=r"image_id\(s\) \[4242\]"):
        evaluate_bbox(coco, [dict(det, category_id=1, image_id=4242)], coco.getCatIds())


def test_empty_prediction_list_scores_zero(tiny_root: Path) -> None:
    coco = COCO(str(tiny_root / "annotations/val.json"))
    classes = classes_of(coco.dataset)
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            class_counts=[30, 10, 5, 2])
    out = run_metric(metric, coco, classes, dets=[])
    assert out["lt/mAP"] == 0.0 and out["lt/AP_rare"] == 0.0 and out["lt/F1"] == 0.0
    res = metric.result
    assert res is not None and "empty_predictions" in res.issues
    assert {(r["P"], r["R"], r["F1"], r["best_F1"]) for r in res.classes} == {(0, 0, 0, 0)}
    np.testing.assert_array_equal(res.confusion[:4, 4], [6, 6, 6, 6])  # every box missed
    assert res.confusion.sum() == 24
    # mmdet's CocoMetric reports nothing at all in this case.
    mmdet = CocoMetric(ann_file=str(tiny_root / "annotations/val.json"))
    mmdet.dataset_meta = {"classes": classes}
    for batch, samples in metric_inputs(coco, []):
        mmdet.process(batch, samples)
    assert mmdet.evaluate(len(coco.getImgIds())) == {}


def test_no_image_at_all_is_an_error(tiny_root: Path) -> None:
    metric = LongTailMetric(ann_file=str(tiny_root / "annotations/val.json"),
                            class_counts=[1, 2, 3, 4])
    metric.dataset_meta = {"classes": ("a", "b", "c", "d")}
    with pytest.raises(ValueError, match="no image to evaluate"):
        metric.compute_metrics([])


def voc_folder(tmp_path: Path, objects: dict[str, list[tuple]], split: list[str]) -> Path:
    """A VOC folder; ``objects`` maps image id to (name, difficult, x1, y1, x2, y2) tuples."""
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objs in objects.items():
        body = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for n, d, x1, y1, x2, y2 in objs)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>64</width><height>64</height></size>{body}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(split))
    return root


def test_voc_bad_input(tmp_path: Path) -> None:
    root = voc_folder(tmp_path, {
        "a": [("cat", 0, 1, 1, 10, 10), ("dog", 1, 2, 2, 9, 9), ("cat", 0, 5, 5, 5, 9)],
        "b": [("dog", 0, 3, 3, 8, 8)]}, ["a", "b"])
    voc = read_voc(root, "train")
    assert voc.classes == ("cat", "dog")
    assert voc.stats.instance_counts.tolist() == [2, 1]  # difficult dog left out, as mmdet does
    assert voc.num_difficult == 1
    assert voc.issues.num_degenerate_boxes == 1 and "a (cat): [5, 5, 5, 9]" in voc.issues.summary()
    assert read_voc(root, "train", include_difficult=True).stats.instance_counts.tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"unknown classes \['dog'\]"):
        read_voc(root, "train", classes=("cat",))
    (root / "ImageSets" / "Main" / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
        read_voc(root, "twice")
    (root / "ImageSets" / "Main" / "missing.txt").write_text("a\nc\n")
    with pytest.raises(FileNotFoundError, match="c.xml"):
        read_voc(root, "missing")
    with pytest.raises(FileNotFoundError, match="splits: \\['missing', 'train', 'twice'\\]"):
        read_voc(root, "test")
    with pytest.raises(FileNotFoundError, match="did you mean"):
        read_voc(tmp_path, "train")
    bad = voc_folder(tmp_path / "x", {"a": [("cat", 0, "one", 1, 10, 10)]}, ["a"])
    with pytest.raises(ValueError, match="non-numeric"):
        read_voc(bad, "train")


def test_category_info_bad_input(tmp_path: Path) -> None:
    cats = [{"id": 1, "name": "a", "image_count": 5, "instance_count": 9, "frequency": "r"},
            {"id": 1, "name": "b", "image_count": 50, "instance_count": 60, "frequency": "c"}]
    with pytest.raises(ValueError, match="duplicate category ids 1"):
        load_train_source(write(tmp_path, cats))
    cats[1]["id"] = 2
    with pytest.raises(ValueError, match="num_images=20 is smaller than the largest image_count"):
        load_train_source(write(tmp_path, cats), num_images=20)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_train_source(tmp_path / "nope.json")


def test_conversion_without_instances_names_the_missing_meta_key() -> None:
    """ann_file=None converts the ground truth from 'instances'; without them the first batch
    fails naming the fix, not mmdet's bare assertion after the whole inference."""
    metric = LongTailMetric(ann_file=None, class_counts=[3, 2, 1])
    metric.dataset_meta = {"classes": ("a", "b", "c")}
    sample = {"img_id": 0, "ori_shape": (10, 10),
              "pred_instances": {"bboxes": np.zeros((0, 4)), "scores": np.zeros(0),
                                 "labels": np.zeros(0, dtype=int)}}
    with pytest.raises(ValueError, match="'instances' to the test pipeline's PackDetInputs"):
        metric.process({}, [sample])
    sample["instances"] = [{"bbox": [1, 1, 5, 5], "bbox_label": 0, "ignore_flag": 0}]
    sample["width"], sample["height"] = 10, 10
    import torch
    sample["pred_instances"] = {"bboxes": torch.zeros((0, 4)), "scores": torch.zeros(0),
                                "labels": torch.zeros(0, dtype=torch.long)}
    metric.process({}, [sample])  # with instances the sample is taken
    assert len(metric.results) == 1
