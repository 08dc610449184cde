"""mmimb.losses."""

from mmimb.losses.functional import (
    compile_enabled,
    one_hot_targets,
    sigmoid_focal_loss,
    sigmoid_focal_loss_sum,
    softmax_focal_loss,
)
from mmimb.losses.modules import (
    ClassBalancedCrossEntropyLoss,
    ClassBalancedFocalLoss,
    SoftmaxFocalLoss,
)

__all__ = [
    "ClassBalancedCrossEntropyLoss",
    "ClassBalancedFocalLoss",
    "SoftmaxFocalLoss",
    "compile_enabled",
    "one_hot_targets",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_sum",
    "softmax_focal_loss",
]
