"""mmimb.datasets: the embedded synthetic long-tail dataset and dataset wrappers."""

from mmimb.datasets.synthetic import SyntheticConfig, class_names, generate
from mmimb.datasets.synthetic_dataset import SyntheticLongTailDataset
from mmimb.datasets.wrappers import DatasetEpochHook, RepeatFactorDataset, datasets_with_epoch

__all__ = ["DatasetEpochHook", "RepeatFactorDataset", "SyntheticConfig", "SyntheticLongTailDataset",
           "class_names", "datasets_with_epoch", "generate"]
