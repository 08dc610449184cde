"""Shared fixtures: a tiny synthetic long-tail dataset and the paths of the repository."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from mmimb.datasets.synthetic import SyntheticConfig, generate

REPO = Path(__file__).resolve().parents[1]

# The label cache of mmimb.stats writes under ~/.cache by default: keep the tests (and the
# training runs they start in subprocesses) in a folder of their own.
os.environ["MMIMB_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmimb-test-cache-")

#: A dataset small enough to train a detector on for a few iterations in seconds.
TINY = SyntheticConfig(num_classes=4, max_instances=40, imbalance_ratio=10, val_per_class=6,
                       image_size=64, min_size=10, max_size=24, max_objects=3, seed=1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny synthetic dataset, generated once per test session."""
    return generate(tmp_path_factory.mktemp("synth") / "tiny", TINY)
