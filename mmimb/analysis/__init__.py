"""mmimb.analysis: class-imbalance reports of training sets and plots of long-tail results.

The command line is ``mmimb-analyze`` (:mod:`mmimb.analysis.cli`); figures are drawn by
:mod:`mmimb.analysis.plots` (imported on use, so that ``import mmimb`` stays light).
"""

from mmimb.analysis.resampling import ResamplingEffect, resampling_effect
from mmimb.analysis.sources import DatasetSource, load_source
from mmimb.analysis.summary import (
    DatasetSummary,
    Recommendation,
    format_summary,
    gini,
    imbalance_ratio,
    recommend_cb_beta,
    recommend_repeat_threshold,
    summarize_dataset,
)
from mmimb.analysis.voc import VocAnnotations, read_voc

__all__ = ["DatasetSource", "DatasetSummary", "Recommendation", "ResamplingEffect",
           "VocAnnotations", "format_summary", "gini",
           "imbalance_ratio", "load_source", "read_voc", "recommend_cb_beta",
           "recommend_repeat_threshold", "resampling_effect", "summarize_dataset"]
