"""benchmarks/train_check.py: its timing of mmimb's CUDA fallback, run on CPU tensors.

The training part itself needs a GPU to mean anything; on CPU it was run by hand
(``--iters 4 --cpu-iters 4``). Here the fallback timing is checked with the CPU routed as the
CUDA path is (as ``tests/test_ops_fallback.py`` does).
"""

from __future__ import annotations

import mmcv.ops
import pytest
import torch

from mmimb.ops_fallback import route_mmcv_ops, unroute_mmcv_ops
from tests.conftest import load_script


def test_fallback_calls_are_counted_and_timed_and_results_unchanged() -> None:
    script = load_script("benchmarks/train_check.py")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    expected = mmcv.ops.nms(boxes, scores, 0.5)[1]
    totals: dict[str, list[float]] = {}
    assert script._time_fallbacks(totals) is False  # nothing routed: nothing to time
    route_mmcv_ops(devices=("cpu",))
    try:
        assert script._time_fallbacks(totals) is True
        for _ in range(3):
            torch.testing.assert_close(mmcv.ops.nms(boxes, scores, 0.5)[1], expected)
    finally:
        unroute_mmcv_ops()
    calls, seconds = totals["nms"]
    assert calls == 3 and seconds > 0
    assert set(totals) == {"nms"}


def test_bad_iteration_counts_are_refused() -> None:
    script = load_script("benchmarks/train_check.py")
    with pytest.raises(SystemExit):
        script.parse_args(["--iters", "0"])
    assert script.parse_args([]).iters == 200
