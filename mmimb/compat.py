"""Let torch >= 2.6 load the checkpoints that mmengine 0.10.7 writes, file by file safely.

torch 2.6 made ``torch.load(..., weights_only=True)`` the default. mmengine 0.10.7 calls
``torch.load`` without ``weights_only`` and stores its ``MessageHub`` state in checkpoints:
``HistoryBuffer`` objects holding numpy arrays and scalars. The restricted unpickler refuses those
classes (``UnpicklingError: ... HistoryBuffer``), so ``tools/test.py`` and ``--resume`` fail on
mmengine's own checkpoints.

Rather than switching safe loading off globally (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``), we add the
few classes that mmengine checkpoints contain to torch's allow-list of safe globals. Any other
class in a checkpoint is still refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _numpy_globals() -> list[Any]:
    """The numpy callables that pickles of arrays, dtypes and scalars refer to."""
    from numpy.core import multiarray  # noqa: NPY201  (the pickled name is numpy.core.*)

    dtype_classes = [type(np.dtype(t)) for t in np.sctypeDict.values()]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *sorted(set(dtype_classes), key=str)]


def mmengine_safe_globals() -> list[Any]:
    """Every global that an mmengine 0.10.7 checkpoint written by the runner refers to."""
    from mmengine.logging import HistoryBuffer

    return [HistoryBuffer, *_numpy_globals()]


def allow_mmengine_checkpoints() -> None:
    """Add :func:`mmengine_safe_globals` to torch's safe globals (idempotent)."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())
