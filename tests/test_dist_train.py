"""End to end: ``tools/dist_train.sh`` trains with 2 processes on CPU (gloo), as on GPUs (nccl).

The demo RetinaNet with the equalized focal loss (gradient statistics summed across ranks) and
the repeat-factor sampler trains for 4 iterations on the tiny synthetic dataset, launched by
``tools/dist_train.sh CONFIG 2`` on a machine without a GPU. A probe hook (a module written to
the test's folder and loaded with ``custom_imports``) makes every rank dump what it computed
and loaded; the test checks them against each other and against references.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, TINY

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
ITERS = 4
BATCH = 2

PROBE = '''
"""Test-only hook: each rank dumps its sampler's epoch, its loads, loss statistics, weights."""
import json
from dataclasses import asdict
import os.path as osp

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


@HOOKS.register_module()
class DistProbeHook(Hook):
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.loaded = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.loaded += [int(s.img_id) for s in data_batch["data_samples"]]

    def after_train(self, runner):
        loader = runner.train_dataloader
        sampler = getattr(loader.batch_sampler, "sampler", loader.sampler)
        dataset = loader.dataset
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        loss = model.bbox_head.loss_cls
        rank = runner.rank
        out = dict(
            rank=rank, world_size=runner.world_size, backend=torch.distributed.get_backend(),
            sampler=type(sampler).__name__, seed=int(sampler.seed),
            epoch=sampler.epoch_indices(0).tolist(), shard=sampler.rank_indices(0).tolist(),
            repeat_factors=sampler.repeat_factors.tolist(),
            img_ids=[int(dataset.get_data_info(i)["img_id"]) for i in range(len(dataset))],
            loaded=self.loaded, loss=type(loss).__name__,
            pos_grad=loss.pos_grad.tolist(), neg_grad=loss.neg_grad.tolist())
        with open(osp.join(self.out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
        torch.save(dict(model.named_parameters()), osp.join(self.out_dir, f"rank{rank}.pth"))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, data_root: Path, out_dir: Path) -> Path:
    """The demo EFL RetinaNet with the repeat-factor sampler, shrunk to the tiny dataset."""
    text = f"""
_base_ = '{REPO / 'configs/retinanet/efl_retinanet_r18tiny_fpn_2k_ltsynth.py'}'
custom_imports = dict(imports=['mmimb', 'dist_probe'], allow_failed_imports=False)
data_root = '{data_root}/'
synthetic = {asdict(TINY)!r}
model = dict(bbox_head=dict(num_classes={TINY.num_classes}))
train_dataloader = dict(
    batch_size={BATCH}, num_workers=0, persistent_workers=False,
    sampler=dict(_delete_=True, type='RepeatFactorSampler', oversample_thr=0.5),
    dataset=dict(data_root=data_root, synthetic=synthetic, pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs')]))
train_cfg = dict(max_iters={ITERS}, val_interval=1000)
val_dataloader = None
val_cfg = None
val_evaluator = None
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
default_hooks = dict(checkpoint=dict(interval={ITERS}), logger=dict(interval=1))
custom_hooks = [dict(type='DistProbeHook', out_dir='{out_dir}')]
"""
    path = tmp_path / "dist_cfg.py"
    path.write_text(text)
    (tmp_path / "dist_probe.py").write_text(PROBE)
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) route")
def test_dist_train_two_cpu_ranks(tmp_path: Path, tiny_root: Path) -> None:
    out_dir = tmp_path / "probe"
    out_dir.mkdir()
    cfg = write_config(tmp_path, tiny_root, out_dir)
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()),
               PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        ["bash", str(REPO / "tools/dist_train.sh"), str(cfg), str(WORLD_SIZE),
         "--work-dir", str(tmp_path / "work")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    r0, r1 = ranks
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {(r["world_size"], r["backend"], r["sampler"], r["loss"]) for r in ranks} == {
        (WORLD_SIZE, "gloo", "RepeatFactorSampler", "EqualizedFocalLoss")}

    # One epoch for all ranks: the seed drawn on rank 0 reached rank 1 (sync_random_seed).
    assert r0["seed"] == r1["seed"] and r0["epoch"] == r1["epoch"]
    assert r0["img_ids"] == r1["img_ids"]
    epoch = np.array(r0["epoch"])
    factors = np.array(r0["repeat_factors"])
    # Repeat-factor sampling is active and stochastic rounding kept every count in
    # {floor(r_i), ceil(r_i)} (LVIS, Gupta et al. 2019).
    assert factors.max() > 1 and len(epoch) > len(factors)
    draws = np.bincount(epoch, minlength=len(factors))
    assert np.all((draws >= np.floor(factors)) & (draws <= np.ceil(factors)))
    # Disjoint shards covering the epoch: taking turns, rank 0 then rank 1, the shards give back
    # the epoch, padded with its own beginning to a multiple of the world size.
    total = -(-len(epoch) // WORLD_SIZE) * WORLD_SIZE
    interleaved = np.stack([r0["shard"], r1["shard"]], axis=1).ravel()
    np.testing.assert_array_equal(interleaved, np.resize(epoch, total))
    # Each rank loaded the beginning of its own shard, nothing else.
    assert len(r0["shard"]) >= ITERS * BATCH
    img_ids = np.array(r0["img_ids"])
    for r in ranks:
        assert r["loaded"] == img_ids[r["shard"][:ITERS * BATCH]].tolist()
    assert r0["loaded"] != r1["loaded"]

    # The loss's gradient statistics are those of the global batch: equal on both ranks, although
    # each rank saw other images, and saved in the checkpoint.
    assert r0["pos_grad"] == r1["pos_grad"] and r0["neg_grad"] == r1["neg_grad"]
    assert len(r0["pos_grad"]) == TINY.num_classes and min(r0["neg_grad"]) > 0
    ckpt = torch.load(tmp_path / "work" / f"iter_{ITERS}.pth", map_location="cpu")
    head = "bbox_head.loss_cls."
    assert ckpt["state_dict"][head + "pos_grad"].tolist() == r0["pos_grad"]
    assert ckpt["state_dict"][head + "neg_grad"].tolist() == r0["neg_grad"]
    # DistributedDataParallel kept the weights in step (not BatchNorm's running statistics: the
    # runner wraps with broadcast_buffers=False, as mmengine does).
    weights = [torch.load(out_dir / f"rank{r}.pth", map_location="cpu") for r in range(WORLD_SIZE)]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=0, atol=0, msg=name)


SLURM_RANK = '''
import sys
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmimb.tool_utils import init_cpu_distributed

cfg = Config(dict(launcher="slurm", env_cfg=dict(dist_cfg=dict(backend="nccl", timeout=60))))
started = init_cpu_distributed(cfg)
total = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(total)
print(started, dist.get_backend(), dist.get_rank(), dist.get_world_size(), float(total),
      cfg.env_cfg.dist_cfg.backend, cfg.model_wrapper_cfg.device_ids)
dist.destroy_process_group()
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) route")
def test_slurm_launcher_on_cpu(tmp_path: Path) -> None:
    """mmengine's slurm launcher, without its ``torch.cuda.set_device``: 2 tasks as srun
    starts them (Slurm's variables only) form one gloo group."""
    script = tmp_path / "rank.py"
    script.write_text(SLURM_RANK)
    port = str(free_port())
    procs = [subprocess.Popen(
        [sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                            SLURM_NTASKS="2", SLURM_NODELIST="localhost",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
        for rank in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err[-3000:]
    assert [out.split() for out, _ in outputs] == [
        ["True", "gloo", str(rank), "2", "3.0", "gloo", "None"] for rank in range(2)]


def test_slurm_train_sh_srun_command(tmp_path: Path) -> None:
    """``tools/slurm_train.sh`` hands srun mmdet's options and one train.py process per task."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_LOG"\n')
    srun.chmod(0o755)
    log = tmp_path / "srun.txt"

    def srun_args(**env: str) -> list[str]:
        subprocess.run(
            ["bash", str(REPO / "tools/slurm_train.sh"), "part", "job", "cfg.py", "work",
             "--cfg-options", "a=1"], check=True, timeout=30,
            env=dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                     SRUN_LOG=str(log), PYTHON="py", **env))
        return log.read_text().splitlines()

    train = ["py", "-u", str(REPO / "tools/train.py"), "cfg.py", "--work-dir=work",
             "--launcher=slurm", "--cfg-options", "a=1"]
    assert srun_args(GPUS="16") == [
        "-p", "part", "--job-name=job", "--gres=gpu:8", "--ntasks=16", "--ntasks-per-node=8",
        "--cpus-per-task=5", "--kill-on-bad-exit=1", *train]
    # CPU nodes: no GPU requested.
    assert srun_args(GPUS="2", GRES="", SRUN_ARGS="--mem=4G -t 10") == [
        "-p", "part", "--job-name=job", "--ntasks=2", "--ntasks-per-node=2",
        "--cpus-per-task=5", "--kill-on-bad-exit=1", "--mem=4G", "-t", "10", *train]
