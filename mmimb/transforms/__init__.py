"""mmimb.transforms: rare-class augmentation for mmdet training pipelines.

Registered in ``mmdet.registry.TRANSFORMS``:

- :class:`RareClassCopyPaste`: pastes object crops of the classes that training statistics
  choose (boxes only or instance masks), with scale jitter and occlusion handling.
- :class:`RarityConditionedApply`: applies ordinary transforms with a probability set by the
  rarest class in the image.
"""

from mmimb.transforms.copy_paste import PasteResult, Patch, RareClassCopyPaste, paste_patches
from mmimb.transforms.crop_bank import (
    CropBank,
    build_crop_bank,
    crop_bank_from_dataset,
    paste_class_probs,
)
from mmimb.transforms.rarity import RarityConditionedApply, class_apply_probs

__all__ = [
    "CropBank",
    "Patch",
    "PasteResult",
    "RareClassCopyPaste",
    "RarityConditionedApply",
    "build_crop_bank",
    "class_apply_probs",
    "crop_bank_from_dataset",
    "paste_class_probs",
    "paste_patches",
]
