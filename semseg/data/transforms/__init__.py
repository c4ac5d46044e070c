"""Data transforms over a ``results`` dict, as the configs' pipelines name them.

``results`` holds ``img`` (H, W, 3) uint8 BGR, label maps such as ``gt_seg_map`` (H, W) uint8 listed in
``seg_fields``, and metadata (``img_shape``, ``ori_shape``, ``scale``, ``scale_factor``, ``flip``,
``pad_shape``...). Each transform follows MMSegmentation 1.2.2 / mmcv 2.1: same arguments, cv2 resizing
with the same rounding, and random draws from numpy's global generator in the same order, so a seeded
pipeline gives the oracle's arrays. Normalization is the data preprocessor's job, not a transform's.
"""

from semseg.data.transforms.compose import Compose, TestTimeAug
from semseg.data.transforms.formatting import GenerateEdge, PackSegInputs
from semseg.data.transforms.geometric import (
    INTERPOLATIONS,
    Pad,
    RandomChoiceResize,
    RandomCrop,
    RandomFlip,
    RandomResize,
    RandomRotate,
    Resize,
    rescale_size,
    resize_image,
    rotate_image,
)
from semseg.data.transforms.loading import (
    LoadAnnotations,
    LoadImageFromFile,
    LoadImageFromNDArray,
    read_image,
    read_label_map,
)
from semseg.data.transforms.photometric import PhotoMetricDistortion

__all__ = [
    "INTERPOLATIONS",
    "Compose",
    "GenerateEdge",
    "LoadAnnotations",
    "LoadImageFromFile",
    "LoadImageFromNDArray",
    "PackSegInputs",
    "Pad",
    "PhotoMetricDistortion",
    "RandomChoiceResize",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "RandomRotate",
    "Resize",
    "TestTimeAug",
    "read_image",
    "read_label_map",
    "rescale_size",
    "resize_image",
    "rotate_image",
]
