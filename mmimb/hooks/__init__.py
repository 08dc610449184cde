"""mmimb.hooks."""

from mmimb.hooks.class_stats_hook import ClassStatsHook

__all__ = ["ClassStatsHook"]
