"""``SyntheticLongTailDataset``: mmdet's ``CocoDataset`` over the generated long-tail data."""

from __future__ import annotations

import os.path as osp
from typing import Any

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

from mmimb.datasets.synthetic import SyntheticConfig, class_names, generate, make_command


@DATASETS.register_module()
class SyntheticLongTailDataset(CocoDataset):
    """The synthetic long-tailed dataset of :mod:`mmimb.datasets.synthetic`, one split of it.

    The images and COCO json are generated under ``data_root`` the first time the dataset is
    loaded (a few seconds) and reused afterwards.

    Args:
        data_root: folder of the generated dataset.
        split: ``'train'`` or ``'val'``.
        synthetic: arguments of :class:`~mmimb.datasets.synthetic.SyntheticConfig`;
            ``with_masks=True`` adds instance masks (RLE), read by
            ``LoadAnnotations(with_mask=True)``.
        generate_if_missing: generate the data when ``data_root`` holds none; when False a
            missing folder raises ``FileNotFoundError`` naming the command that creates it.
        **kwargs: passed to ``CocoDataset`` (``pipeline``, ``filter_cfg``, ``test_mode`` ...).
    """

    def __init__(self, data_root: str, split: str = "train",
                 synthetic: dict[str, Any] | None = None, generate_if_missing: bool = True,
                 **kwargs: Any) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.synthetic = SyntheticConfig(**(synthetic or {}))
        self.generate_if_missing = generate_if_missing
        kwargs.setdefault("metainfo", {"classes": class_names(self.synthetic.num_classes)})
        super().__init__(data_root=data_root, ann_file=f"annotations/{split}.json",
                         data_prefix={"img": f"{split}/"}, **kwargs)

    def load_data_list(self) -> list[dict]:
        if not osp.exists(osp.join(self.data_root, "meta.json")) and not self.generate_if_missing:
            raise FileNotFoundError(
                f"no synthetic dataset in {self.data_root!r}; create it with "
                f"`{make_command(self.data_root, self.synthetic)}`")
        # Generates a missing dataset; refuses one made with other arguments (e.g. no masks).
        generate(self.data_root, self.synthetic)
        return super().load_data_list()
