"""A content-addressed disk cache of the instance labels read from a serialised dataset.

mmengine keeps a loaded dataset as one byte string of pickled records (``serialize_data=True``,
the default of every mmdet dataset). Reading the labels of all images means unpickling every
record, which takes seconds at LVIS scale and half a minute at Objects365 scale, and every rank
of every run does it again. The records of a given dataset are the same bytes from run to run,
so :mod:`mmimb.stats` stores the labels it read under a hash of those bytes and, next time,
loads them instead of unpickling anything: a hash of the bytes costs about a tenth of reading
them.

The key is the SHA-1 of the record offsets and of the record bytes themselves (plus whether
ignored boxes were counted), so any change to the annotation file, the class list, the filters
or the pipeline's view of the records changes the key: a stale entry can never be served.

An entry is one ``{key}.npz`` file holding the labels, the offsets and a SHA-1 checksum of
both, written under a temporary name and renamed into place. The checksum guards the other
direction, an entry changed after it was written (by hand, by a disk fault): an entry whose
labels or offsets no longer match it is a miss, with a warning, and is rewritten. A label
outside the classes in an intact entry is an error that names the entry's file.

Environment variables:
    ``MMIMB_CACHE_DIR``: where entries live; default ``$XDG_CACHE_HOME/mmimb`` (that is,
    ``~/.cache/mmimb``). ``MMIMB_LABEL_CACHE=0``: neither read nor write the cache.

A cache that cannot be written (read-only disk, no home) only costs a warning; a damaged or
altered entry is read as a miss (with a warning) and rewritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

#: Bumped whenever the stored format or the meaning of an entry changes (2: one ``.npz`` file
#: per entry, with a checksum).
FORMAT_VERSION = 2


def cache_dir() -> Path | None:
    """The directory of the label cache, or ``None`` when ``MMIMB_LABEL_CACHE=0``."""
    if os.environ.get("MMIMB_LABEL_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    root = os.environ.get("MMIMB_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "mmimb"


def serialized_key(data_bytes: np.ndarray, data_address: np.ndarray,
                   include_ignored: bool) -> str:
    """The cache key of a serialised mmengine dataset: a hash of its records' bytes.

    Args:
        data_bytes: ``uint8[B]`` the pickled records, one after the other.
        data_address: ``int64[N]`` end offset of every record in ``data_bytes``.
        include_ignored: whether boxes with ``ignore_flag`` are counted (changes the labels).
    """
    digest = hashlib.sha1(f"mmimb-labels-v{FORMAT_VERSION}-{int(include_ignored)}".encode(),
                          usedforsecurity=False)  # a content key, not a signature
    digest.update(np.ascontiguousarray(data_address, dtype=np.int64).data)
    digest.update(np.ascontiguousarray(data_bytes).data)
    return f"{digest.hexdigest()}-{len(data_address)}"


def entry_path(key: str) -> Path | None:
    """The file of the entry ``key``, or ``None`` when the cache is switched off."""
    root = cache_dir()
    return None if root is None else root / "labels" / f"{key}.npz"


def checksum(labels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``uint8[20]`` SHA-1 of the labels (their dtype included) and of the offsets."""
    digest = hashlib.sha1(np.dtype(labels.dtype).str.encode(), usedforsecurity=False)
    digest.update(np.ascontiguousarray(labels).data)
    digest.update(np.ascontiguousarray(offsets, dtype=np.int64).data)
    return np.frombuffer(digest.digest(), dtype=np.uint8)


def _miss(path: Path, why: str) -> None:
    warnings.warn(f"mmimb's label cache entry {path} {why}: reading the dataset's records "
                  "again and rewriting the entry", RuntimeWarning, stacklevel=3)


def load(key: str, num_images: int,
         num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(labels, offsets)`` stored under ``key``, or ``None`` on a miss.

    An entry that cannot be read, does not describe ``num_images`` images consistently, or
    whose labels and offsets do not match its checksum counts as a miss, with a warning.

    Args:
        key: the entry's key (:func:`serialized_key`).
        num_images: images of the dataset.
        num_classes: if given, every label must lie in ``[0, num_classes)``.

    Raises:
        ValueError: naming the entry's file and the image, if an intact entry holds a label
            outside ``[0, num_classes)``.
    """
    path = entry_path(key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as entry:
            labels, offsets, stored = entry["labels"], entry["offsets"], entry["checksum"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        _miss(path, f"cannot be read ({type(err).__name__}: {err})")
        return None
    if (offsets.shape != (num_images + 1,) or labels.ndim != 1 or offsets[0] != 0
            or offsets[-1] != len(labels)):
        _miss(path, f"does not describe {num_images} images")
        return None
    if not np.array_equal(stored, checksum(labels, offsets)):
        _miss(path, "does not match its checksum (it changed after it was written)")
        return None
    if num_classes is not None and len(labels):
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            image = int(np.searchsorted(offsets, bad[0], side="right")) - 1
            raise ValueError(
                f"label {int(labels[bad[0]])} (image {image}) read from the label cache entry "
                f"{path} is outside [0, num_classes={num_classes}); the entry is intact and its "
                "key is a hash of the dataset's records, so the records hold this label: check "
                "num_classes and the class list (MMIMB_LABEL_CACHE=0 reads the records instead)")
    return labels, offsets


def save(key: str, labels: np.ndarray, offsets: np.ndarray) -> None:
    """Store ``(labels, offsets)`` and their checksum under ``key``; warn if the disk refuses.

    The entry is written to a temporary name and renamed into place, so concurrent writers
    (every rank of a distributed job) and readers never see a partial entry.
    """
    path = entry_path(key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, labels=labels, offsets=offsets, checksum=checksum(labels, offsets))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        warnings.warn(f"mmimb could not write its label cache in {path.parent} ({err}); "
                      "set MMIMB_CACHE_DIR to a writable directory or MMIMB_LABEL_CACHE=0",
                      RuntimeWarning, stacklevel=3)
