"""mmimb.evaluation: long-tail COCO-style evaluation."""

from mmimb.evaluation.long_tail import LongTailResult, evaluate_bbox, summarize_long_tail
from mmimb.evaluation.long_tail_metric import LongTailMetric

__all__ = ["LongTailMetric", "LongTailResult", "evaluate_bbox", "summarize_long_tail"]
