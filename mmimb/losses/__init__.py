"""mmimb.losses."""

from mmimb.losses.federated import FederatedLoss
from mmimb.losses.functional import (
    compile_enabled,
    one_hot_targets,
    sigmoid_focal_loss,
    sigmoid_focal_loss_sum,
    softmax_focal_loss,
)
from mmimb.losses.functional_gradient_guided import (
    efl_focusing_factors,
    eqlv2_class_weights,
    equalization_loss_v2,
    equalized_focal_loss,
    gradient_sums,
)
from mmimb.losses.gradient_guided import EqualizationLossV2, EqualizedFocalLoss
from mmimb.losses.logit_adjust import (
    BalancedSoftmaxLoss,
    EffectiveClassMarginLoss,
    PostHocLogitAdjustedLoss,
)
from mmimb.losses.modules import (
    ClassBalancedCrossEntropyLoss,
    ClassBalancedFocalLoss,
    SoftmaxFocalLoss,
)
from mmimb.losses.seesaw import HeadSizedSeesawLoss

__all__ = [
    "BalancedSoftmaxLoss",
    "ClassBalancedCrossEntropyLoss",
    "ClassBalancedFocalLoss",
    "EffectiveClassMarginLoss",
    "EqualizationLossV2",
    "EqualizedFocalLoss",
    "FederatedLoss",
    "HeadSizedSeesawLoss",
    "PostHocLogitAdjustedLoss",
    "SoftmaxFocalLoss",
    "compile_enabled",
    "efl_focusing_factors",
    "eqlv2_class_weights",
    "equalization_loss_v2",
    "equalized_focal_loss",
    "gradient_sums",
    "one_hot_targets",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_sum",
    "softmax_focal_loss",
]
