"""The label cache: hits skip the records, any change to the records misses, an entry changed
after it was written misses, and a cache that cannot be used costs a warning, never a wrong or
missing answer."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmdet.datasets import CocoDataset
from mmengine.dataset import BaseDataset

from mmimb import label_cache, stats
from mmimb.stats import ImageLabels, image_labels_from_coco, image_labels_from_dataset


def coco(root: Path, **kwargs: Any) -> CocoDataset:
    """The tiny training set as mmdet loads it (serialised records, the default)."""
    kwargs.setdefault("filter_cfg", {"filter_empty_gt": False})
    kwargs.setdefault("metainfo", {"classes": image_labels_from_coco(
        root / "annotations/train.json")[1]})
    return CocoDataset(data_root=str(root), ann_file="annotations/train.json",
                       data_prefix={"img": "train/"}, pipeline=[], **kwargs)


def uncached(dataset: Any, **kwargs: Any) -> ImageLabels:
    """The labels read record by record, the cache switched off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMIMB_LABEL_CACHE", "0")
        return image_labels_from_dataset(dataset, **kwargs)


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "labels").glob("*.npz"))


def assert_same(a: ImageLabels, b: ImageLabels) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.num_classes == b.num_classes


class Records(BaseDataset):
    """A dataset of the given records, serialised as every mmdet dataset is."""

    def __init__(self, records: list[dict[str, Any]], num_classes: int) -> None:
        self._records = records
        super().__init__(metainfo={"classes": tuple(map(str, range(num_classes)))})

    def load_data_list(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._records)  # mmengine clears the list once serialised


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MMIMB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MMIMB_LABEL_CACHE", raising=False)
    return tmp_path / "cache"


def test_a_second_read_comes_from_the_cache(tiny_root: Path, cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = coco(tiny_root)
    first = image_labels_from_dataset(dataset)
    assert len(entries(cache)) == 1  # labels, offsets and their checksum in one file
    assert first.offsets[-1] > 0 and first.num_images == len(dataset)
    assert_same(first, uncached(dataset))

    def no_reading(*args: Any) -> None:
        raise AssertionError("a cached dataset's records were read again")

    monkeypatch.setattr(stats, "_read_labels", no_reading)
    assert_same(image_labels_from_dataset(coco(tiny_root)), first)  # a new object, same bytes


def test_records_that_differ_get_their_own_entry(tiny_root: Path, cache: Path) -> None:
    kept = coco(tiny_root)
    filtered = coco(tiny_root, metainfo={"classes": kept.metainfo["classes"][:2]})
    assert len(filtered) == len(kept)  # same images, fewer boxes
    assert_same(image_labels_from_dataset(kept), uncached(kept))
    assert_same(image_labels_from_dataset(filtered), uncached(filtered))
    assert uncached(filtered).offsets[-1] < uncached(kept).offsets[-1]
    assert len(entries(cache)) == 2
    # One label changed, nothing else: same length, different bytes, a new entry.
    records = [{"instances": [{"bbox_label": 0}, {"bbox_label": 2}]},
               {"instances": [{"bbox_label": 1}]}]
    first = image_labels_from_dataset(Records(records, 3))
    records[1]["instances"][0]["bbox_label"] = 2
    second = image_labels_from_dataset(Records(records, 3))
    assert (first.labels.tolist(), second.labels.tolist()) == ([0, 2, 1], [0, 2, 2])
    assert len(entries(cache)) == 4
    # Counting ignored boxes or not is part of the key as well.
    assert_same(image_labels_from_dataset(kept, include_ignored=True),
                uncached(kept, include_ignored=True))
    assert len(entries(cache)) == 5


def stored(cache: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The only entry of the cache: its file and its arrays."""
    (name,) = entries(cache)
    with np.load(cache / "labels" / name) as entry:
        return cache / "labels" / name, dict(entry)


def test_a_damaged_entry_is_a_miss_and_is_rewritten(tiny_root: Path, cache: Path) -> None:
    dataset = coco(tiny_root)
    expected = image_labels_from_dataset(dataset)
    path, _ = stored(cache)
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert_same(image_labels_from_dataset(dataset), expected)
    _, arrays = stored(cache)
    np.testing.assert_array_equal(arrays["offsets"], expected.offsets)


@pytest.mark.parametrize("change", ["labels", "offsets"])
def test_an_entry_changed_after_writing_is_a_miss_and_is_rewritten(
        tiny_root: Path, cache: Path, change: str) -> None:
    """Same shapes, other labels (all set to class 0, as in issue 14), or boxes moved to other
    images: the checksum no longer matches, so the records are read again."""
    dataset = coco(tiny_root)
    expected = uncached(dataset)
    image_labels_from_dataset(dataset)
    path, arrays = stored(cache)
    np.testing.assert_array_equal(arrays["checksum"], label_cache.checksum(
        expected.labels, expected.offsets))
    altered = dict(arrays)
    if change == "labels":
        altered["labels"] = np.zeros_like(arrays["labels"])
    else:  # the last box of the first image with boxes moves to the next image
        offsets = arrays["offsets"].copy()
        end = int(np.flatnonzero(np.diff(offsets) > 0)[0]) + 1
        assert end < len(offsets) - 1, "the case needs an image after the first boxes"
        offsets[end] -= 1
        altered["offsets"] = offsets
    assert not all(np.array_equal(altered[k], arrays[k]) for k in ("labels", "offsets"))
    np.savez(path, **altered)  # the old checksum kept
    with pytest.warns(RuntimeWarning, match="does not match its checksum"):
        assert_same(image_labels_from_dataset(dataset), expected)
    _, rewritten = stored(cache)
    for key in ("labels", "offsets", "checksum"):
        np.testing.assert_array_equal(rewritten[key], arrays[key])


def test_an_out_of_range_label_from_the_cache_names_the_entry(cache: Path) -> None:
    """The records hold label 5: read with 6 classes, then with 3, the second read comes from the
    cache and says so, naming the file; without the cache the error is the records' own."""
    dataset = Records([{"instances": [{"bbox_label": 0}]},
                       {"instances": [{"bbox_label": 1}, {"bbox_label": 5}]}], 6)
    assert image_labels_from_dataset(dataset).labels.tolist() == [0, 1, 5]
    path, _ = stored(cache)
    with pytest.raises(ValueError, match=r"label 5 \(image 1\) read from the label cache entry "
                                         rf".*{path.name} is outside \[0, num_classes=3\)"):
        image_labels_from_dataset(dataset, num_classes=3)
    with pytest.raises(ValueError, match=r"label 5 is outside \[0, num_classes=3\)") as err:
        uncached(dataset, num_classes=3)
    assert "cache" not in str(err.value)


def test_switched_off_or_unwritable_cache_still_gives_the_labels(
        tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = coco(tiny_root)
    expected = uncached(dataset)
    monkeypatch.setenv("MMIMB_CACHE_DIR", str(tmp_path / "off"))
    monkeypatch.setenv("MMIMB_LABEL_CACHE", "0")
    assert_same(image_labels_from_dataset(dataset), expected)
    assert not (tmp_path / "off").exists()
    monkeypatch.delenv("MMIMB_LABEL_CACHE")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MMIMB_CACHE_DIR", str(blocker))
    with pytest.warns(RuntimeWarning, match="could not write its label cache"):
        assert_same(image_labels_from_dataset(dataset), expected)


def test_datasets_that_are_not_serialised_are_not_cached(tiny_root: Path, cache: Path) -> None:
    """Their records are read without unpickling: there is nothing to save."""
    dataset = coco(tiny_root, serialize_data=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = image_labels_from_dataset(dataset)
    assert_same(labels, uncached(coco(tiny_root)))
    assert not cache.exists()


@pytest.mark.parametrize("label", [40_000, -1, 7])
def test_a_label_outside_the_classes_raises(label: int, cache: Path) -> None:
    """40000 does not even fit the 2-byte labels of 3 classes; -1 and 7 fit but are wrong."""
    dataset = Records([{"instances": [{"bbox_label": 0}]},
                       {"instances": [{"bbox_label": 1}, {"bbox_label": label}]}], 3)
    with pytest.raises(ValueError, match=rf"label {label}\b.*outside \[0, num_classes=3\)"):
        image_labels_from_dataset(dataset)


@pytest.mark.parametrize("address_slice", [1, 4, 4096])
def test_serialised_and_plain_storage_read_the_same(tiny_root: Path, address_slice: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Records unpickled from the bytes, a few addresses at a time, equal the plain list."""
    monkeypatch.setattr(stats, "_ADDRESS_SLICE", address_slice)
    serialised = uncached(coco(tiny_root))
    assert serialised.num_images > 4 * address_slice or address_slice == 4096
    assert_same(serialised, uncached(coco(tiny_root, serialize_data=False)))
