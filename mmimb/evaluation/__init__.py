"""mmimb.evaluation: long-tail COCO-style evaluation."""

from mmimb.evaluation.long_tail import (
    LongTailResult,
    compare_table,
    evaluate_bbox,
    format_table,
    load_result,
    summarize_long_tail,
    write_report,
)
from mmimb.evaluation.long_tail_metric import LongTailMetric

__all__ = ["LongTailMetric", "LongTailResult", "compare_table", "evaluate_bbox", "format_table",
           "load_result", "summarize_long_tail", "write_report"]
