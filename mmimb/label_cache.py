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

Environment variables:
    ``MMIMB_CACHE_DIR``: where entries live; default ``$XDG_CACHE_HOME/mmimb`` (that is,
    ``~/.cache/mmimb``). ``MMIMB_LABEL_CACHE=0``: neither read nor write the cache.

A cache that cannot be written (read-only disk, no home) only costs a warning; a damaged entry
is read as a miss and rewritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

#: Bumped whenever the stored format or the meaning of an entry changes.
FORMAT_VERSION = 1


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


def _paths(key: str) -> tuple[Path, Path] | None:
    root = cache_dir()
    if root is None:
        return None
    return root / "labels" / f"{key}.labels.npy", root / "labels" / f"{key}.offsets.npy"


def load(key: str, num_images: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(labels, offsets)`` stored under ``key``, or ``None`` on a miss.

    An entry that does not describe ``num_images`` images consistently counts as a miss.
    """
    paths = _paths(key)
    if paths is None or not all(p.is_file() for p in paths):
        return None
    try:
        labels, offsets = (np.load(p, allow_pickle=False) for p in paths)
    except (OSError, ValueError):
        return None
    if (offsets.shape != (num_images + 1,) or labels.ndim != 1 or offsets[0] != 0
            or offsets[-1] != len(labels)):
        return None
    return labels, offsets


def save(key: str, labels: np.ndarray, offsets: np.ndarray) -> None:
    """Store ``(labels, offsets)`` under ``key``; warn instead of failing if the disk refuses.

    Each file is written to a temporary name and renamed into place, so concurrent writers
    (every rank of a distributed job) and readers never see a partial entry.
    """
    paths = _paths(key)
    if paths is None:
        return
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for path, array in zip(paths[::-1], (offsets, labels), strict=True):
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, array, allow_pickle=False)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except OSError as err:
        warnings.warn(f"mmimb could not write its label cache in {paths[0].parent} ({err}); "
                      "set MMIMB_CACHE_DIR to a writable directory or MMIMB_LABEL_CACHE=0",
                      RuntimeWarning, stacklevel=3)

