"""mmimb.hooks."""

from mmimb.hooks.class_stats_hook import ClassStatsHook
from mmimb.hooks.freeze import FreezeExceptHook

__all__ = ["ClassStatsHook", "FreezeExceptHook"]
