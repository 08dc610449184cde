"""`mmimb-analyze` on bad input (issue 14, item 7): every case ends in one clear error that names
the file and the element, exit status 1, and no output written; dict settings pass through
``--resample``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmimb.analysis import load_source, read_voc
from mmimb.analysis.cli import main, resample_spec
from mmimb.analysis.voc import BOX_KEYS
from tests.test_analysis import metric_report

CLASSES = ("a", "b", "c")
#: Labels of six images: class a in five, b in three, c in one; image 5 has no box.
PER_IMAGE = [[0, 1], [0], [0, 1, 1], [0, 2], [0, 1], []]


def obj(name: str, box: tuple[str | None, ...] = ("1", "2", "30", "40")) -> str:
    """One VOC ``<object>``; a coordinate of None is left out."""
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(BOX_KEYS, box, strict=True)
                     if v is not None)
    return f"<object><name>{name}</name><difficult>0</difficult><bndbox>{coords}</bndbox></object>"


def voc_folder(root: Path, xml: dict[str, str]) -> Path:
    """A VOC folder whose split ``train`` lists the given files (id -> XML text)."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, text in xml.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(text)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(xml) + "\n")
    return root


def good_voc(root: Path) -> Path:
    return voc_folder(root, {f"img{i}": "<annotation>" + "".join(obj(CLASSES[c]) for c in labels)
                             + "</annotation>" for i, labels in enumerate(PER_IMAGE)})


def coco_json(path: Path, per_image: list[list[int]]) -> Path:
    """A COCO file of 40x40 images with one 10x10 box per label."""
    anns = [{"id": j + 1000 * i, "image_id": i, "category_id": c + 1,
             "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0}
            for i, labels in enumerate(per_image) for j, c in enumerate(labels)]
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 40}
                       for i in range(len(per_image))],
            "annotations": anns,
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]}
    path.write_text(json.dumps(data))
    return path


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit status and stderr of ``mmimb-analyze args``."""
    code = main(args)
    return code, capsys.readouterr().err


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("text", "expected"), [
    ("<annotation><object><name>a</name>", "not well-formed XML"),
    (f"<annotation>{obj('a')}{obj('b', ('1', '2', '30', None))}</annotation>",
     r"<object> number 2 \('b'\) has no <ymax> in its <bndbox>"),
    (f"<annotation>{obj('a', ('1', 'abc', '30', '40'))}</annotation>",
     r"<object> number 1 \('a'\) has a non-numeric <ymin> 'abc'"),
    (f"<annotation>{obj('a', ('nan', '2', '30', '40'))}</annotation>",
     r"<object> number 1 \('a'\) has a non-numeric <xmin> 'nan'"),
    ("<annotation><object><name>a</name></object></annotation>",
     r"<object> number 1 \(a\) has no <bndbox>"),
])
def test_a_bad_voc_file_is_named_with_its_element(tmp_path: Path, text: str, expected: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    root = voc_folder(tmp_path / "voc", {"good": f"<annotation>{obj('a')}</annotation>",
                                         "bad": text})
    bad_file = root / "Annotations" / "bad.xml"
    with pytest.raises(ValueError, match=rf"{bad_file}: {expected}"):
        read_voc(root, "train")
    out = tmp_path / "out"
    code, err = run(["dataset", str(root), "--split", "train", "--out-dir", str(out),
                     "--no-progress"], capsys)
    assert code == 1 and str(bad_file) in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("content", "expected"), [
    ("not json {", "not JSON"),
    ("[1, 2]", "it holds a list, not an object"),
    ('{"overall": [], "groups": {}, "classes": [], "count_by": "image"}',
     "a list as 'overall'"),
])
def test_results_on_a_file_that_is_not_a_report(tmp_path: Path, content: str, expected: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "other.json"
    path.write_text(content)
    code, err = run(["results", str(path), "--out-dir", str(tmp_path / "out")], capsys)
    assert code == 1
    assert f"{path} is not a LongTailMetric report" in err and expected in err
    assert not (tmp_path / "out").exists()


def test_results_on_an_annotation_file_and_on_a_damaged_report(
        tmp_path: Path, tiny_root: Path, capsys: pytest.CaptureFixture) -> None:
    ann = tiny_root / "annotations" / "val.json"
    code, err = run(["results", str(ann), "--out-dir", str(tmp_path / "out")], capsys)
    assert code == 1 and "no key 'overall'" in err and "'annotations'" in err  # its keys
    report = metric_report(tiny_root, tmp_path, 0.0)
    assert run(["results", str(report), "--out-dir", str(tmp_path / "ok")], capsys)[0] == 0
    data = json.loads(report.read_text())
    del data["classes"][2]["AP"]
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(data))
    code, err = run(["results", str(damaged), "--out-dir", str(tmp_path / "out")], capsys)
    assert code == 1 and "classes[2] has no ['AP']" in err
    # A bad baseline: the method's plot is not written either.
    code, err = run(["results", str(report), "--baseline", str(damaged), "--out-dir",
                     str(tmp_path / "out")], capsys)
    assert code == 1 and str(damaged) in err
    assert not (tmp_path / "out").exists()


def expected_images(out: Path, name: str = "resampling_0.csv") -> list[float]:
    return [float(r["expected_images"]) for r in csv.DictReader((out / name).open())]


def test_dict_sampling_strategy_through_resample(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Images per class are [5, 3, 1]; a dict sets the targets of the classes it names and keeps
    the others (imbalanced-learn's dict rule), by name or by index."""
    ann = coco_json(tmp_path / "train.json", PER_IMAGE)
    for i, entries in enumerate((["sampling_strategy.a=2", "sampling_strategy.b=1"],
                                 ["sampling_strategy.0=2", "sampling_strategy.1=1"])):
        out = tmp_path / f"out{i}"
        code, err = run(["dataset", str(ann), "--out-dir", str(out), "--resample",
                         "type=UndersampleSampler", *entries], capsys)
        assert code == 0, err
        assert expected_images(out) == [2.0, 1.0, 1.0]
    code, err = run(["dataset", str(ann), "--out-dir", str(tmp_path / "x"), "--resample",
                     "type=UndersampleSampler", "sampling_strategy={'a':2}"], capsys)
    assert code == 1 and "sampling_strategy.CLASS=N" in err
    code, err = run(["dataset", str(ann), "--out-dir", str(tmp_path / "x"), "--resample",
                     "type=UndersampleSampler", "sampling_strategy.z=2"], capsys)
    assert code == 1 and "names class 'z'" in err
    assert not (tmp_path / "x").exists()


def test_resample_spec_nests_dotted_keys() -> None:
    pairs: dict[str, Any] = {"type": "UndersampleSampler", "sampling_strategy.a": 2,
                             "sampling_strategy.7": 1, "sampling_strategy.traffic.light": 3}
    assert resample_spec(pairs, ("a", "7")) == {
        "type": "UndersampleSampler", "sampling_strategy": {"a": 2, "7": 1, "traffic.light": 3}}
    assert resample_spec(pairs)["sampling_strategy"][7] == 1  # no class named 7: an index
    with pytest.raises(ValueError, match="both whole"):
        resample_spec({"sampling_strategy": "auto", "sampling_strategy.a": 2})
    with pytest.raises(ValueError, match="both whole"):
        resample_spec({"sampling_strategy.a": 2, "sampling_strategy": "auto"})
    with pytest.raises(ValueError, match="entry by entry"):  # DictAction splits "{0:5,1:3}"
        resample_spec({"sampling_strategy": ["{0:5", "1:3}"]})


def test_a_resample_error_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = good_voc(tmp_path / "voc")
    out = tmp_path / "out"
    base = ["dataset", str(root), "--split", "train", "--out-dir", str(out), "--no-progress"]
    assert run([*base, "--name", "first", "--resample", "type=RepeatFactorSampler",
                "oversample_thr=0.5"], capsys)[0] == 0
    before = listing(out)
    assert "resampling_0.csv" in before and json.loads(before["class_stats.json"])["name"] == (
        "first")
    for bad in (["oversample_thr=-1"], ["thr=0.5"], ["oversample_thr=[1, 2]"]):
        code, err = run([*base, "--name", "second", "--resample", "type=RepeatFactorSampler",
                         *bad], capsys)
        assert code == 1 and ("RepeatFactorSampler" in err or "oversample_thr" in err), err
        assert listing(out) == before  # the first report, whole; no temporary folder left
    fresh = tmp_path / "fresh" / "deeper"
    code, _ = run(["dataset", str(root), "--split", "train", "--out-dir", str(fresh),
                   "--no-progress", "--resample", "type=NoSuchSampler"], capsys)
    assert code == 1 and not fresh.exists()


def test_an_empty_annotation_list_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann = coco_json(tmp_path / "empty.json", [[], [], []])
    code, err = run(["dataset", str(ann), "--out-dir", str(tmp_path / "out")], capsys)
    assert code == 1
    assert f"{ann}: no boxes in its 3 images (3 classes)" in err and "re-sample" not in err
    assert not (tmp_path / "out").exists()
    root = voc_folder(tmp_path / "voc", {"x": "<annotation></annotation>"})
    code, err = run(["dataset", str(root), "--split", "train", "--out-dir", str(tmp_path / "o"),
                     "--no-progress"], capsys)
    assert code == 1 and "no boxes in its 1 images" in err


def test_the_helpers_build_what_they_claim(tmp_path: Path) -> None:
    """The reference of the cases above: a loop over ``PER_IMAGE`` against both readers."""
    instances, images = np.zeros(3, int), np.zeros(3, int)
    for labels in PER_IMAGE:
        np.add.at(instances, labels, 1)
        images[sorted(set(labels))] += 1
    voc = read_voc(good_voc(tmp_path / "voc"), "train").stats
    coco = load_source(coco_json(tmp_path / "train.json", PER_IMAGE)).stats
    for stats in (voc, coco):
        assert stats.instance_counts.tolist() == instances.tolist() == [5, 4, 1]
        assert stats.image_counts.tolist() == images.tolist() == [5, 3, 1]
