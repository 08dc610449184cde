"""mmimb.datasets: the embedded synthetic long-tail dataset and dataset wrappers."""

from mmimb.datasets.synthetic import SyntheticConfig, class_names, generate
from mmimb.datasets.synthetic_dataset import SyntheticLongTailDataset

__all__ = ["SyntheticConfig", "SyntheticLongTailDataset", "class_names", "generate"]
