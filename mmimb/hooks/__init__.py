"""mmimb.hooks."""

from mmimb.hooks.class_stats_hook import ClassStatsHook
from mmimb.hooks.freeze import FreezeExceptHook
from mmimb.hooks.setup_check import SetupCheckHook

__all__ = ["ClassStatsHook", "FreezeExceptHook", "SetupCheckHook"]
