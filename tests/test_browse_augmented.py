"""tools/browse_augmented.py and mmimb.transforms.visualize: the PNG grid of augmented samples.

The grid is checked against the samples it draws: its size, each tile showing its (upscaled)
image, each box's outline in its class colour, a caption under each tile.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from mmimb.transforms.visualize import (
    CAPTION,
    PAD,
    _palette,
    augmented_samples,
    build_train_dataset,
    grid_size,
    write_augmented_grid,
)
from tests.conftest import REPO
from tests.test_transforms import CLASSES, coco_cfg, tiny_experiment

CONFIG = "retinanet/rarecopypaste_retinanet_r18tiny_fpn_2k_ltsynth.py"


def test_grid_shows_each_sample_with_coloured_boxes(tiny_root: Path, tmp_path: Path) -> None:
    cfg = tiny_experiment(CONFIG, tiny_root, tmp_path / "work")
    out = write_augmented_grid(cfg, tmp_path / "grid.png", num=5, seed=3, tile=256)
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert out.stat().st_size > 0
    assert (grid.shape[1], grid.shape[0]) == grid_size(5, 256) == (3 * 256 + 4 * PAD,
                                                                   2 * (256 + CAPTION) + 3 * PAD)
    samples = augmented_samples(build_train_dataset(cfg), 5, seed=3)
    assert any("pasted" in s.caption for s in samples)
    colours = _palette(len(CLASSES))
    hits = total = 0
    for n, s in enumerate(samples):
        x0, y0 = PAD + (n % 3) * (256 + PAD), PAD + (n // 3) * (256 + CAPTION + PAD)
        f = 256 // s.image.shape[0]
        tile = grid[y0:y0 + 256, x0:x0 + 256]
        expected = np.repeat(np.repeat(s.image, f, axis=0), f, axis=1)
        assert (tile == expected).all(axis=2).mean() > 0.7   # the picture, under the drawings
        for (bx0, by0, _, by1), label in zip(s.boxes * f, s.labels, strict=True):
            total += 1
            hits += tuple(tile[int((by0 + by1) / 2), int(bx0)]) == colours[label]
        caption = grid[y0 + 256:y0 + 256 + CAPTION, x0:x0 + 256]
        assert (caption > 200).any()                           # caption text
    assert total > 5 and hits >= 0.8 * total   # other boxes' outlines may cross an edge


def test_grid_of_a_multi_image_mix_config(tiny_root: Path, tmp_path: Path) -> None:
    inner = dict(coco_cfg(tiny_root), pipeline=[dict(type="LoadImageFromFile"),
                                                 dict(type="LoadAnnotations", with_bbox=True)])
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type="MultiImageMixDataset", dataset=inner, pipeline=[
            dict(type="Mosaic", img_scale=(64, 64)),
            dict(type="RareClassCopyPaste", dataset=coco_cfg(tiny_root), freq_thr=0.5),
            dict(type="PackDetInputs")]))))
    out = write_augmented_grid(cfg, tmp_path / "mix.png", num=4, tile=128, cols=4)
    assert Image.open(out).size == grid_size(4, 128, cols=4)
    samples = augmented_samples(build_train_dataset(cfg), 4)
    assert all(s.image.shape == (128, 128, 3) for s in samples)
    assert all("pasted" in s.caption for s in samples)


@pytest.mark.slow
def test_tool_writes_the_png(tiny_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny_copypaste.py"
    tiny_experiment(CONFIG, tiny_root, tmp_path / "work").dump(str(config))
    out = tmp_path / "grids" / "grid.png"
    proc = subprocess.run([sys.executable, "tools/browse_augmented.py", str(config), "--out",
                           str(out), "--num", "3", "--tile", "64"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    assert out.stat().st_size > 0 and Image.open(out).size == grid_size(3, 64)
