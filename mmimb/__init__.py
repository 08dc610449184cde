"""mmimb: class-imbalance and long-tail tools for MMDetection 3.x.

Importing this package registers every mmimb component into mmdet's registries (``MODELS``,
``DATASETS``, ``DATA_SAMPLERS``, ``TRANSFORMS``, ``METRICS``, ``HOOKS``), so a config switches
them on with ``custom_imports=dict(imports=['mmimb'], allow_failed_imports=False)``. It also
lets ``torch.load`` read the checkpoints that mmengine writes (see :mod:`mmimb.compat`), and, when
mmcv was built without CUDA kernels, runs the mmcv ops of our detectors on CUDA tensors with
torchvision's kernels (see :mod:`mmimb.ops_fallback`).
"""

from mmimb import compat as _compat
from mmimb import ops_fallback as _ops_fallback

_compat.allow_mmengine_checkpoints()
_ops_fallback.route_mmcv_ops_if_needed()

from mmimb import (  # noqa: E402  (registration happens on import, after the compat fix)
    analysis,
    datasets,
    evaluation,
    hooks,
    losses,
    models,
    samplers,
    stats,
    strategies,
    transforms,
)

__version__ = "0.1.0"
__all__ = ["analysis", "datasets", "evaluation", "hooks", "losses", "models", "samplers", "stats",
           "strategies", "transforms", "__version__"]
