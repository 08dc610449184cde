"""mmimb.hooks."""

from mmimb.hooks.class_stats_hook import ClassStatsHook
from mmimb.hooks.freeze import FreezeExceptHook
from mmimb.hooks.prior_bias import PriorBiasHook
from mmimb.hooks.setup_check import SetupCheckHook

__all__ = ["ClassStatsHook", "FreezeExceptHook", "PriorBiasHook", "SetupCheckHook"]
