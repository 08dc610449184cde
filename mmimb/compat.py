"""Let torch >= 2.6 load the checkpoints that mmengine 0.10.7 writes, with safe loading kept on.

torch 2.6 made ``torch.load(..., weights_only=True)`` the default. mmengine 0.10.7 calls
``torch.load`` without ``weights_only`` and stores its ``MessageHub`` in every checkpoint:
``HistoryBuffer`` objects holding numpy arrays and scalars, and a dict of the buffer's statistics
methods pickled as ``getattr(HistoryBuffer, 'mean')``. torch's restricted unpickler refuses those
globals (``UnpicklingError: ... HistoryBuffer``), so ``tools/test.py`` and ``--resume`` fail on
mmengine's own checkpoints.

Rather than switching safe loading off for every file (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``), we
add to torch's allow-list exactly the globals that these checkpoints use. ``getattr`` is not
allowed as such (it would reach any attribute of any loaded object): the pickled name
``builtins.getattr`` is bound to :func:`history_buffer_getattr`, which only resolves the
registered statistics methods of ``HistoryBuffer``. Every other global is still refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to the statistics methods of ``HistoryBuffer`` (and subclasses).

    Raises:
        pickle.UnpicklingError: for any other object or attribute.
    """
    import pickle

    if (isinstance(obj, type) and issubclass(obj, HistoryBuffer)
            and name in HistoryBuffer._statistics_methods):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f"refusing getattr({obj!r}, {name!r}) while loading a checkpoint: only the statistics "
        f"methods {sorted(HistoryBuffer._statistics_methods)} of HistoryBuffer are allowed")


def _numpy_globals() -> list[Any]:
    """The numpy callables and classes that pickles of arrays, dtypes and scalars refer to."""
    from numpy._core import multiarray

    dtype_classes = {type(np.dtype(t)) for t in np.sctypeDict.values()}
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *sorted(dtype_classes, key=str)]


def mmengine_safe_globals() -> list[Any]:
    """Every global that a checkpoint written by mmengine 0.10.7's runner refers to."""
    HistoryBuffer()  # registers the default statistics methods (min, max, mean, current)
    return [HistoryBuffer, *_numpy_globals(),
            (history_buffer_getattr, "builtins.getattr"),
            (history_buffer_getattr, "__builtin__.getattr")]


def allow_mmengine_checkpoints() -> None:
    """Add :func:`mmengine_safe_globals` to torch's safe globals (idempotent)."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())
