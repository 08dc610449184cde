"""mmimb.evaluation: long-tail COCO-style evaluation (one COCOeval pass for every number)."""

from mmimb.evaluation.annotations import (
    AnnotationIssues,
    TrainSource,
    check_coco,
    load_train_source,
)
from mmimb.evaluation.groups import GROUPINGS, Grouping, assign_groups
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
from mmimb.evaluation.matching import ClassPR, confusion_matrix, precision_recall

__all__ = ["GROUPINGS", "AnnotationIssues", "ClassPR", "Grouping", "LongTailMetric",
           "LongTailResult", "TrainSource", "assign_groups", "check_coco", "compare_table",
           "confusion_matrix", "evaluate_bbox", "format_table", "load_result",
           "load_train_source", "precision_recall", "summarize_long_tail", "write_report"]
