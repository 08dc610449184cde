"""Balanced ensembles for detection (EasyEnsemble): K members on K balanced subsets, one result.

EasyEnsemble (Liu, Wu & Zhou, "Exploratory Undersampling for Class-Imbalance Learning", IEEE
TSMC-B 2009) trains every member on all minority examples and its own random part of the
majority, and combines the members. For detection, :func:`run_ensemble` does, with one command
(``tools/train_ensemble.py``):

1. Member ``k`` (``0 <= k < K``) trains the config with its ``UndersampleSampler`` (the config
   must use it), seeded with :func:`member_seed` (sampler and ``randomness``) and, unless the
   config says otherwise, ``redraw=False``: one fixed balanced subset per member. The sampler
   keeps every image that holds a class it does not reduce, so every minority image is in every
   subset; the subsets differ in the majority images they keep.
2. Members train one after another, each as its own ``tools/train.py`` process in
   ``{work_dir}/member{k}`` (:func:`mmimb.strategies.training.train_in_work_dir`): a finished
   member is never retrained, an interrupted one resumes from its last checkpoint. Before a
   member trains, the finished ones must agree on their class list.
3. Every member predicts the evaluation set (the config's ``test_dataloader``) and the
   predictions are fused image by image (:class:`~mmimb.strategies.BoxFusionEnsemble`, with the
   config's ``ensemble.fusion``, weighted boxes fusion by default), then evaluated by the
   config's ``test_evaluator`` (``LongTailMetric``) in ``{work_dir}/fused``.
4. ``{work_dir}/ensemble.json`` reports the fused evaluation next to each member's own final
   evaluation, and the cost: ``K`` members cost ``K`` times the training budget of one model.

Config (the experiment file)::

    train_dataloader = dict(sampler=dict(type='UndersampleSampler', sampling_strategy=0.1,
                                         redraw=False))
    ensemble = dict(members=3, fusion=dict(type='BoxFusion', method='wbf', iou_thr=0.55))
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmdet.registry import TASK_UTILS
from mmengine.config import Config

from mmimb.quality.runs import final_report
from mmimb.strategies.ensemble_model import check_same_classes
from mmimb.strategies.training import train_in_work_dir
from mmimb.tool_utils import build_runner

#: Member ``k`` of an ensemble with base seed ``s`` trains with seed ``SEED_STRIDE * s + k``, so
#: the ensembles of different base seeds share no member seed.
SEED_STRIDE = 1000
#: The sampler every member trains with.
SAMPLER = "UndersampleSampler"


def member_seed(cfg: Config, index: int) -> int:
    """The seed of member ``index``: ``SEED_STRIDE * s + index``, ``s`` the config's seed."""
    return SEED_STRIDE * int((cfg.get("randomness") or {}).get("seed") or 0) + index


def ensemble_settings(cfg: Config, members: int | None = None) -> tuple[int, dict[str, Any]]:
    """The number of members and the fusion config of an ensemble config, checked.

    Args:
        cfg: the config; its ``ensemble`` dict may give ``members`` and ``fusion``.
        members: overrides ``ensemble.members``.

    Returns:
        ``(K, fusion config)``; the fusion defaults to ``dict(type='BoxFusion')`` (WBF).

    Raises:
        ValueError: if ``K`` is missing or below 2, the config does not train with
            ``UndersampleSampler``, or the fusion config is invalid (its ``weights`` not one
            per member included).
    """
    settings = cfg.get("ensemble") or {}
    k = settings.get("members") if members is None else members
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"an ensemble needs members >= 2 (--members or ensemble.members in the "
                         f"config), got {k!r}")
    sampler = cfg.get("train_dataloader", {}).get("sampler", {}).get("type")
    if sampler != SAMPLER:
        raise ValueError(f"the members of a balanced ensemble train with {SAMPLER}, but the "
                         f"config's train_dataloader.sampler is {sampler!r}: use an undersampling "
                         "config (see configs/faster_rcnn/easyensemble_*.py)")
    fusion = dict(settings.get("fusion") or dict(type="BoxFusion"))
    weights = TASK_UTILS.build(copy.deepcopy(fusion)).weights  # validates the arguments
    if weights is not None and len(weights) != k:
        raise ValueError(f"ensemble.fusion.weights must have one entry per member: {k} members, "
                         f"got {weights}")
    return k, fusion


def member_config(cfg: Config, index: int) -> Config:
    """The config member ``index`` trains: ``cfg`` with the member's seeds (see the module)."""
    member = copy.deepcopy(cfg)
    seed = member_seed(cfg, index)
    member.randomness = dict(member.get("randomness") or {}, seed=seed)
    sampler = member.train_dataloader.sampler
    sampler.seed = seed
    sampler.setdefault("redraw", False)
    return member


def _check_classes(records: list[dict[str, Any]]) -> None:
    check_same_classes([(f"member {i} ({r['checkpoint']})", r["classes"])
                        for i, r in enumerate(records)])


def _summary(report: Path) -> dict[str, Any]:
    data = json.loads(report.read_text())
    return {"report": str(report), "overall": data["overall"], "groups": data["groups"]}


def evaluate_ensemble(cfg: Config, members: list[dict[str, Any]], fusion: dict[str, Any],
                      work_dir: str | Path) -> Path:
    """Evaluate the fused predictions of trained members with the config's test evaluator.

    Args:
        cfg: the ensemble config (its test dataloader, evaluator and hooks are used).
        members: the members' training records (``config``, ``checkpoint``).
        fusion: the :class:`~mmimb.strategies.BoxFusion` config.
        work_dir: where the evaluation writes its logs and ``long_tail.json``.

    Returns:
        The path of the fused evaluation's ``long_tail.json``.

    Raises:
        ValueError: if the members were trained on different class lists, or on another one
            than the evaluation dataset's.
        RuntimeError: if the evaluator wrote no ``long_tail.json``.
    """
    fused = copy.deepcopy(cfg)
    fused.model = dict(
        type="BoxFusionEnsemble", fusion=fusion,
        members=[dict(model=Config.fromfile(m["config"]).model, checkpoint=m["checkpoint"])
                 for m in members])
    fused.work_dir = str(work_dir)
    fused.load_from = None
    fused.resume = False
    runner = build_runner(fused)
    model_classes = runner.model.classes
    dataset_classes = tuple(runner.test_dataloader.dataset.metainfo["classes"])
    if model_classes and model_classes != dataset_classes:
        raise ValueError(f"the ensemble members were trained on {list(model_classes)}, but the "
                         f"evaluation dataset has the classes {list(dataset_classes)}")
    runner.test()
    reports = sorted(Path(work_dir).glob("*/long_tail.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise RuntimeError(f"the fused evaluation wrote no long_tail.json under {work_dir}: is "
                           "the config's test_evaluator a LongTailMetric?")
    return reports[-1]


def run_ensemble(config: str | Path, work_dir: str | Path, root: str | Path,
                 members: int | None = None, cfg_options: dict[str, Any] | None = None,
                 python: str = sys.executable,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) the members of a balanced ensemble, fuse and evaluate them.

    Args:
        config: the ensemble config (see the module docstring).
        work_dir: the ensemble's folder: ``member{k}/``, ``fused/`` and ``ensemble.json``.
        root: repository root (``tools/train.py`` and ``tools/test.py`` are under it).
        members: the number of members ``K`` (default: the config's ``ensemble.members``).
        cfg_options: settings merged into the config (every member's and the evaluation's).
        python: the interpreter of the training processes.
        echo: where progress lines go.

    Returns:
        The report written to ``{work_dir}/ensemble.json``.

    Raises:
        ValueError: see :func:`ensemble_settings` and :func:`evaluate_ensemble`; also when the
            finished members disagree on their class lists (before the next member trains).
        RuntimeError: if a member's training fails (run again to resume).
    """
    cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    k, fusion = ensemble_settings(cfg, members)
    work = Path(work_dir)
    records: list[dict[str, Any]] = []
    for index in range(k):
        _check_classes(records)  # refuse before training one more member
        wdir = work / f"member{index}"
        echo(f"[ensemble] member {index + 1}/{k} in {wdir}")
        record = train_in_work_dir(member_config(cfg, index), wdir, root, python)
        records.append(dict(record, work_dir=str(wdir), seed=member_seed(cfg, index)))
    _check_classes(records)
    for record in records:
        with (Path(record["work_dir"]) / "train.log").open("a") as log:
            report = final_report(Path(record["config"]), root, Path(record["work_dir"]),
                                  python, log)
        record.update(_summary(report))
    echo(f"[ensemble] fusing the {k} members' predictions ({fusion})")
    fused = evaluate_ensemble(cfg, records, fusion, work / "fused")
    total = sum(r["wall_s"] for r in records)
    result = {
        "config": str(config),
        "members": records,
        "fusion": fusion,
        "classes": records[0]["classes"],
        "budget_note": f"{k} members: {k} x the training budget of one model "
                       f"({total:.0f} s of training in all)",
        "fused": _summary(fused),
    }
    out = work / "ensemble.json"
    out.write_text(json.dumps(result, indent=1))
    echo(f"[ensemble] fused mAP {result['fused']['overall']['mAP']:.3f}; report {out}")
    return result
