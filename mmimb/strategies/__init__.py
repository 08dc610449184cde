"""mmimb.strategies: training strategies made of several models or stages.

- :mod:`mmimb.strategies.fusion`: :class:`BoxFusion` (``TASK_UTILS``), weighted boxes fusion,
  NMS or soft-NMS of several models' detections on an image;
- :mod:`mmimb.strategies.ensemble_model`: :class:`BoxFusionEnsemble` (``MODELS``), trained
  detectors that predict as one, their boxes fused;
- :mod:`mmimb.strategies.ensemble`: balanced ensembles (EasyEnsemble), trained and evaluated
  with one command (``tools/train_ensemble.py``);
- :mod:`mmimb.strategies.decoupled`: decoupled classifier re-training (cRT) in two stages with
  one command (``tools/train_decoupled.py``); the freezing is
  :class:`mmimb.hooks.FreezeExceptHook`;
- :mod:`mmimb.strategies.training`: one model per work dir, trained through ``tools/train.py``,
  resumed when interrupted, never trained twice.
"""

from mmimb.strategies.decoupled import check_stage2_config, run_decoupled
from mmimb.strategies.ensemble import (
    ensemble_settings,
    evaluate_ensemble,
    member_config,
    member_seed,
    run_ensemble,
)
from mmimb.strategies.ensemble_model import BoxFusionEnsemble, check_same_classes
from mmimb.strategies.fusion import (
    FUSION_METHODS,
    SOFT_NMS_TYPES,
    WBF_CONF_TYPES,
    BoxFusion,
    check_fusion_args,
    fuse_detections,
)
from mmimb.strategies.training import (
    FINISHED,
    final_checkpoint,
    read_finished,
    train_in_work_dir,
    trained_classes,
)

__all__ = [
    "FINISHED",
    "FUSION_METHODS",
    "SOFT_NMS_TYPES",
    "WBF_CONF_TYPES",
    "BoxFusion",
    "BoxFusionEnsemble",
    "check_fusion_args",
    "check_same_classes",
    "check_stage2_config",
    "ensemble_settings",
    "evaluate_ensemble",
    "final_checkpoint",
    "fuse_detections",
    "member_config",
    "member_seed",
    "read_finished",
    "run_decoupled",
    "run_ensemble",
    "train_in_work_dir",
    "trained_classes",
]
