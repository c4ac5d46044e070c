"""Data transforms over a ``results`` dict (``img`` HWC uint8 BGR, ``gt_seg_map`` HW, shapes), as the
configs' pipelines name them. Resizing is cv2-based with MMSegmentation's rounding, so a test pipeline
gives the same input tensor as the oracle's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from semseg.build import build

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def read_image(path: str | Path, flag: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Read an image file with cv2; a missing, unreadable or truncated file raises naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, flag) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image {path} (corrupt, truncated or not an image)")
    return image


def rescale_size(width: int, height: int, scale: Sequence[int] | float) -> tuple[int, int]:
    """(new_width, new_height) keeping the aspect ratio: the long side fits max(scale), the short side
    min(scale) (or a plain factor), rounded half up."""
    if isinstance(scale, (int, float)):
        factor = float(scale)
    else:
        factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def resize_image(image: np.ndarray, width: int, height: int, interpolation: str = "bilinear") -> np.ndarray:
    """cv2 resize to (height, width) with a named interpolation."""
    return cv2.resize(image, (width, height), interpolation=INTERPOLATIONS[interpolation])


class LoadImageFromFile:
    """``results['img_path']`` -> ``img`` (H, W, 3) uint8 BGR, ``ori_shape``, ``img_shape``."""

    def __init__(self, to_float32: bool = False, color_type: str = "color", imdecode_backend: str = "cv2",
                 backend_args: dict | None = None, ignore_empty: bool = False):
        flags = {"color": cv2.IMREAD_COLOR, "grayscale": cv2.IMREAD_GRAYSCALE, "unchanged": cv2.IMREAD_UNCHANGED}
        if color_type not in flags:
            raise ValueError(f"color_type must be one of {sorted(flags)}, got {color_type!r}")
        self.to_float32 = to_float32
        self.flag = flags[color_type]

    def __call__(self, results: dict) -> dict:
        image = read_image(results["img_path"], self.flag)
        if self.to_float32:
            image = image.astype(np.float32)
        results.update(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2])
        return results


class LoadImageFromNDArray(LoadImageFromFile):
    """``results['img']`` already holds an (H, W, 3) array; record its shapes."""

    def __call__(self, results: dict) -> dict:
        image = results["img"]
        if self.to_float32:
            image = image.astype(np.float32)
        results.update(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2])
        return results


class LoadAnnotations:
    """``results['seg_map_path']`` -> ``gt_seg_map`` (H, W) uint8; ``reduce_zero_label`` maps 0 to 255
    and shifts the other labels down by one (ADE20K's convention)."""

    def __init__(self, reduce_zero_label: bool | None = None, imdecode_backend: str = "pillow",
                 backend_args: dict | None = None):
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, results: dict) -> dict:
        label = read_image(results["seg_map_path"], cv2.IMREAD_UNCHANGED)
        if label.ndim != 2:
            raise ValueError(f"label map {results['seg_map_path']} must have one channel, got shape {label.shape}")
        reduce = self.reduce_zero_label
        if reduce is None:
            reduce = results.get("reduce_zero_label", False)
        if reduce:
            label = label.astype(np.int64)
            label[label == 0] = 256
            label = (label - 1).clip(0, 255).astype(np.uint8)
        if results.get("label_map"):
            mapped = label.copy()
            for old, new in results["label_map"].items():
                mapped[label == old] = new
            label = mapped
        results["gt_seg_map"] = label
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results


class Resize:
    """Resize to ``scale`` (w, h) or by ``scale_factor``; ``keep_ratio`` fits the image inside ``scale``.

    Label maps resize with nearest neighbour. Records ``img_shape`` and ``scale_factor`` (w, h).
    """

    def __init__(self, scale: Sequence[int] | int | None = None, scale_factor: float | None = None,
                 keep_ratio: bool = False, clip_object_border: bool = True, backend: str = "cv2",
                 interpolation: str = "bilinear"):
        if (scale is None) == (scale_factor is None):
            raise ValueError("Resize needs exactly one of scale and scale_factor")
        self.scale = (scale, scale) if isinstance(scale, int) else scale
        self.scale_factor = scale_factor
        self.keep_ratio = keep_ratio
        self.interpolation = interpolation

    def target_size(self, width: int, height: int, scale) -> tuple[int, int]:
        if self.keep_ratio:
            return rescale_size(width, height, scale)
        if isinstance(scale, (int, float)):
            return int(width * scale + 0.5), int(height * scale + 0.5)
        return int(scale[0]), int(scale[1])

    def __call__(self, results: dict) -> dict:
        scale = results.get("scale", self.scale if self.scale is not None else self.scale_factor)
        height, width = results["img"].shape[:2]
        new_width, new_height = self.target_size(width, height, scale)
        results["img"] = resize_image(results["img"], new_width, new_height, self.interpolation)
        for key in results.get("seg_fields", []):
            results[key] = resize_image(results[key], new_width, new_height, "nearest")
        results["img_shape"] = (new_height, new_width)
        results["scale_factor"] = (new_width / width, new_height / height)
        results["keep_ratio"] = self.keep_ratio
        return results


class PackSegInputs:
    """``img`` (H, W, C) -> ``inputs`` tensor (C, H, W); ``gt_seg_map`` -> ``gt_sem_seg`` tensor (H, W)."""

    def __init__(self, meta_keys: Sequence[str] = ("img_path", "seg_map_path", "ori_shape", "img_shape",
                                                   "pad_shape", "scale_factor", "flip", "flip_direction",
                                                   "reduce_zero_label")):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        image = results["img"]
        if image.ndim == 2:
            image = image[..., None]
        packed = {"inputs": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        if "gt_seg_map" in results:
            packed["gt_sem_seg"] = torch.from_numpy(results["gt_seg_map"].astype(np.int64))
        packed["meta"] = {key: results[key] for key in self.meta_keys if key in results}
        return packed


class Compose:
    """Apply transforms built from a pipeline config list in order."""

    def __init__(self, pipeline: Sequence[dict | object]):
        self.transforms = [build("transform", step) if isinstance(step, dict) else step for step in pipeline]

    def __call__(self, results: dict) -> dict:
        for transform in self.transforms:
            results = transform(results)
        return results
