"""Shared fixtures: a tiny synthetic long-tail dataset and the paths of the repository."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mmimb.datasets.synthetic import SyntheticConfig, generate

REPO = Path(__file__).resolve().parents[1]

# The label cache of mmimb.stats writes under ~/.cache by default: keep the tests (and the
# training runs they start in subprocesses) in a folder of their own.
os.environ["MMIMB_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmimb-test-cache-")

# Under pytest-xdist (``make test`` runs ``-n auto``) every worker trains on one thread, and so
# do the tools it starts: two workers with a thread pool each would fight over the cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def load_script(path: str) -> ModuleType:
    """Import a script of the repository (``tools/...``, ``benchmarks/...``) by its path."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: A dataset small enough to train a detector on for a few iterations in seconds.
TINY = SyntheticConfig(num_classes=4, max_instances=40, imbalance_ratio=10, val_per_class=6,
                       image_size=64, min_size=10, max_size=24, max_objects=3, seed=1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny synthetic dataset, generated once per test session."""
    return generate(tmp_path_factory.mktemp("synth") / "tiny", TINY)
