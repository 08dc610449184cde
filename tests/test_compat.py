"""torch 2.14 loads mmengine checkpoints with safe loading on, and still refuses the rest."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

import mmimb  # noqa: F401  (installs the allow-list)
from mmimb.compat import history_buffer_getattr


def test_message_hub_state_round_trips_with_weights_only(tmp_path: Path) -> None:
    hub = MessageHub("compat-test")
    for value in (1.0, 2.5, np.float64(4.0)):
        hub.update_scalar("train/loss", value)
    hub.update_info("iter", 7)
    path = tmp_path / "ckpt.pth"
    torch.save({"message_hub": hub.state_dict(), "w": torch.ones(2)}, path)
    loaded = torch.load(path, weights_only=True)
    buffer = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.mean() == pytest.approx(2.5) and buffer.current() == 4.0
    assert loaded["message_hub"]["runtime_info"]["iter"] == 7


class Evil:
    def __reduce__(self):  # noqa: ANN204
        return (getattr, (np.ndarray, "tofile"))


def test_other_globals_and_attributes_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match="tofile"):
        torch.load(path, weights_only=True)
    with pytest.raises(pickle.UnpicklingError):
        history_buffer_getattr(HistoryBuffer, "__init__")
    torch.save({"x": Path("/")}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
