"""Geometric transforms: they move the image and every map in ``seg_fields`` together.

Images resize and rotate with the configured interpolation (bilinear by default), label maps always
with nearest neighbour. Sizes follow MMSegmentation 1.2.2 / mmcv 2.1: scales are (w, h), crop sizes (h, w),
sizes round half up (``int(x + 0.5)``). Random draws use numpy's global generator in mmcv's order, so
with the same ``np.random.seed`` a pipeline draws the same values as the oracle's:

- RandomResize: ``random_sample()`` for ``ratio_range``, else ``randint`` for width then height.
- RandomChoiceResize: ``randint(len(scales))``.
- RandomCrop: ``randint`` for the top then the left offset, again (up to 10 more times) while one class
  covers ``cat_max_ratio`` or more of the crop.
- RandomFlip: one ``choice`` over the directions and "no flip" (drawn even when ``prob`` is 0 or 1).
- RandomRotate: ``rand()`` against ``prob`` then ``uniform`` for the angle, both always drawn.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from semseg.build import build

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}

PAD_MODES = {
    "constant": cv2.BORDER_CONSTANT,
    "edge": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
    "symmetric": cv2.BORDER_REFLECT,
}

FLIP_AXES = {"horizontal": (1,), "vertical": (0,), "diagonal": (0, 1)}


def _round_size(width: float, height: float) -> tuple[int, int]:
    return int(width + 0.5), int(height + 0.5)


def rescale_size(width: int, height: int, scale: Sequence[int] | float) -> tuple[int, int]:
    """(new_width, new_height) keeping the aspect ratio: the long side fits max(scale), the short side
    min(scale) (or a plain factor), rounded half up."""
    if isinstance(scale, numbers.Number):
        if scale <= 0:
            raise ValueError(f"scale factor must be positive, got {scale}")
        factor = float(scale)
    else:
        factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return _round_size(width * factor, height * factor)


def resize_image(image: np.ndarray, width: int, height: int, interpolation: str = "bilinear") -> np.ndarray:
    """cv2 resize to (height, width) with a named interpolation."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    return cv2.resize(image, (int(width), int(height)), interpolation=INTERPOLATIONS[interpolation])


class Resize:
    """Resize to ``scale`` (w, h), or by ``scale_factor`` (a factor or (fw, fh)), image and label maps.

    With ``keep_ratio`` the image is scaled by one factor so that its long side fits max(scale) and its
    short side min(scale); ``scale_factor`` first becomes the scale (round(w * fw), round(h * fh)).
    ``scale`` wins when both are given. Records ``scale``, ``img_shape``, ``scale_factor`` (w, h) and
    ``keep_ratio``.
    """

    def __init__(self, scale: Sequence[int] | int | None = None,
                 scale_factor: float | Sequence[float] | None = None, keep_ratio: bool = False,
                 clip_object_border: bool = True, backend: str = "cv2", interpolation: str = "bilinear"):
        if scale is None and scale_factor is None:
            raise ValueError("Resize needs scale or scale_factor")
        if backend != "cv2":
            raise ValueError(f"Resize supports backend='cv2' only, got {backend!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        self.scale = (scale, scale) if isinstance(scale, int) else scale
        if isinstance(scale_factor, numbers.Number):
            scale_factor = (scale_factor, scale_factor)
        self.scale_factor = None if scale_factor is None else tuple(scale_factor)
        self.keep_ratio = keep_ratio
        self.interpolation = interpolation

    def __call__(self, results: dict) -> dict:
        height, width = results["img"].shape[:2]
        if self.scale:
            scale = (self.scale, self.scale) if isinstance(self.scale, int) else self.scale
        else:
            if self.scale_factor is None:
                raise ValueError("Resize has neither scale nor scale_factor set")
            scale = _round_size(width * float(self.scale_factor[0]), height * float(self.scale_factor[1]))
        if self.keep_ratio:
            new_width, new_height = rescale_size(width, height, scale)
        else:
            new_width, new_height = int(scale[0]), int(scale[1])
        results["scale"] = scale
        results["img"] = resize_image(results["img"], new_width, new_height, self.interpolation)
        for key in results.get("seg_fields", []):
            results[key] = resize_image(results[key], new_width, new_height, "nearest")
        results["img_shape"] = (new_height, new_width)
        results["scale_factor"] = (new_width / width, new_height / height)
        results["keep_ratio"] = self.keep_ratio
        return results


def _build_resize(resize_type: str, resize_kwargs: dict) -> Any:
    """The inner resize of RandomResize / RandomChoiceResize: a transform with a settable ``scale``."""
    return build("transform", {"type": resize_type, "scale": 0, **resize_kwargs})


class RandomResize:
    """Resize to a random scale, then as ``resize_type`` (Resize) with ``resize_kwargs`` (``keep_ratio``...).

    ``scale`` (w, h) with ``ratio_range`` (lo, hi): scale times one ratio drawn uniformly, truncated to int.
    ``scale`` a pair of (w, h) bounds: width and height drawn as integers between the bounds, inclusive.
    """

    def __init__(self, scale: Sequence[int] | Sequence[Sequence[int]],
                 ratio_range: Sequence[float] | None = None, resize_type: str = "Resize", **resize_kwargs: Any):
        is_pair_of_ints = len(scale) == 2 and all(isinstance(s, int) for s in scale)
        is_bounds = len(scale) == 2 and all(isinstance(s, Sequence) and len(s) == 2 for s in scale)
        if is_pair_of_ints:
            if ratio_range is None or len(ratio_range) != 2 or ratio_range[0] > ratio_range[1]:
                raise ValueError(f"RandomResize with scale {scale} needs ratio_range=(lo, hi), got {ratio_range}")
        elif not is_bounds:
            raise ValueError(f"RandomResize scale must be (w, h) or ((w0, h0), (w1, h1)), got {scale}")
        self.scale = tuple(scale) if is_pair_of_ints else tuple(tuple(s) for s in scale)
        self.ratio_range = None if ratio_range is None else tuple(ratio_range)
        self.sample_ratio = is_pair_of_ints
        self.resize = _build_resize(resize_type, resize_kwargs)

    def random_scale(self) -> tuple[int, int]:
        """Draw a target scale (w, h) from numpy's global generator."""
        if self.sample_ratio:
            low, high = self.ratio_range
            ratio = np.random.random_sample() * (high - low) + low
            return int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        (w0, h0), (w1, h1) = self.scale
        width = np.random.randint(min(w0, w1), max(w0, w1) + 1)
        height = np.random.randint(min(h0, h1), max(h0, h1) + 1)
        return width, height

    def __call__(self, results: dict) -> dict:
        self.resize.scale = self.random_scale()
        return self.resize(results)


class RandomChoiceResize:
    """Resize to one of ``scales`` drawn uniformly (recorded as ``scale_idx``), then as ``resize_type``."""

    def __init__(self, scales: Sequence[int | Sequence[int]], resize_type: str = "Resize", **resize_kwargs: Any):
        self.scales = list(scales) if isinstance(scales, list) else [scales]
        self.resize = _build_resize(resize_type, resize_kwargs)

    def __call__(self, results: dict) -> dict:
        index = np.random.randint(len(self.scales))
        scale = self.scales[index]
        self.resize.scale = scale if isinstance(scale, int) else tuple(scale)
        results = self.resize(results)
        results["scale_idx"] = index
        return results


class RandomCrop:
    """Crop a random ``crop_size`` (h, w) window (smaller where the image is smaller) from the image and
    label maps. With ``cat_max_ratio`` < 1 the window is redrawn, up to 10 times, until it holds at least
    two classes besides ``ignore_index`` and none of them covers ``cat_max_ratio`` of its counted pixels;
    the last draw is kept otherwise."""

    def __init__(self, crop_size: int | Sequence[int], cat_max_ratio: float = 1.0, ignore_index: int = 255):
        crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"crop_size must be a positive int or (h, w), got {crop_size}")
        self.crop_size = crop_size
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def random_window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(y1, y2, x1, x2) of a window drawn from numpy's global generator."""
        top = np.random.randint(0, max(height - self.crop_size[0], 0) + 1)
        left = np.random.randint(0, max(width - self.crop_size[1], 0) + 1)
        return top, top + self.crop_size[0], left, left + self.crop_size[1]

    def _balanced(self, label: np.ndarray, window: tuple[int, int, int, int]) -> bool:
        y1, y2, x1, x2 = window
        values, counts = np.unique(label[y1:y2, x1:x2], return_counts=True)
        counts = counts[values != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, results: dict) -> dict:
        height, width = results["img"].shape[:2]
        window = self.random_window(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if self._balanced(results["gt_seg_map"], window):
                    break
                window = self.random_window(height, width)
        y1, y2, x1, x2 = window
        results["img"] = results["img"][y1:y2, x1:x2, ...]
        for key in results.get("seg_fields", []):
            results[key] = results[key][y1:y2, x1:x2, ...]
        results["img_shape"] = results["img"].shape[:2]
        return results


class RandomFlip:
    """Flip the image and label maps with probability ``prob``.

    ``direction`` is 'horizontal', 'vertical', 'diagonal' or a list of them: a float ``prob`` is shared
    equally between the listed directions, a list ``prob`` gives one probability per direction.
    ``swap_seg_labels`` [(a, b), ...] swaps label pairs (left/right parts) in flipped label maps.
    Records ``flip`` and ``flip_direction`` (None when not flipped).
    """

    def __init__(self, prob: float | Sequence[float] | None = None, direction: str | Sequence[str] = "horizontal",
                 swap_seg_labels: Sequence[Sequence[int]] | None = None):
        directions = [direction] if isinstance(direction, str) else list(direction)
        unknown = [d for d in directions if d not in FLIP_AXES]
        if unknown or not directions:
            raise ValueError(f"flip direction must be one of {sorted(FLIP_AXES)}, got {direction!r}")
        if isinstance(prob, numbers.Number):
            probs = [float(prob) / len(directions)] * len(directions)
        elif isinstance(prob, Sequence) and len(prob) == len(directions):
            probs = [float(p) for p in prob]
        else:
            raise ValueError(f"prob must be a float or one float per direction {directions}, got {prob!r}")
        if min(probs) < 0 or sum(probs) > 1 + 1e-9:
            raise ValueError(f"flip probabilities must be >= 0 and sum to at most 1, got {prob!r}")
        self.prob = prob
        self.directions = directions
        self.probs = [*probs, max(0.0, 1.0 - sum(probs))]
        self.swap_seg_labels = swap_seg_labels

    def random_direction(self) -> str | None:
        """One draw from numpy's global generator: a direction, or None for no flip."""
        index = np.random.choice(len(self.probs), p=self.probs)
        return self.directions[index] if index < len(self.directions) else None

    def _flip_label(self, label: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        flipped = np.ascontiguousarray(np.flip(label, axis=axes))
        if self.swap_seg_labels:
            original = flipped.copy()
            for a, b in self.swap_seg_labels:
                flipped[original == a] = b
                flipped[original == b] = a
        return flipped

    def __call__(self, results: dict) -> dict:
        direction = self.random_direction()
        results["flip"] = direction is not None
        results["flip_direction"] = direction
        if direction is None:
            return results
        axes = FLIP_AXES[direction]
        results["img"] = np.ascontiguousarray(np.flip(results["img"], axis=axes))
        for key in results.get("seg_fields", []):
            results[key] = self._flip_label(results[key], axes)
        results["swap_seg_labels"] = self.swap_seg_labels
        return results


def rotate_image(image: np.ndarray, angle: float, center: tuple[float, float] | None, auto_bound: bool,
                 border_value: Any, interpolation: str) -> np.ndarray:
    """Rotate by ``angle`` degrees clockwise about ``center`` (x, y; default the image centre). With
    ``auto_bound`` the canvas grows to hold the whole rotated image. ``border_value`` goes to cv2 as
    given: a plain number fills the first channel only, as in cv2 (and MMSegmentation)."""
    if center is not None and auto_bound:
        raise ValueError("RandomRotate: auto_bound and center cannot be used together")
    height, width = image.shape[:2]
    if center is None:
        center = ((width - 1) * 0.5, (height - 1) * 0.5)
    matrix = cv2.getRotationMatrix2D(tuple(float(c) for c in center), -angle, 1.0)
    if auto_bound:
        cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
        new_width, new_height = height * sin + width * cos, height * cos + width * sin
        matrix[0, 2] += (new_width - width) * 0.5
        matrix[1, 2] += (new_height - height) * 0.5
        width, height = int(np.round(new_width)), int(np.round(new_height))
    return cv2.warpAffine(image, matrix, (width, height), flags=INTERPOLATIONS[interpolation],
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


class RandomRotate:
    """With probability ``prob``, rotate image and label maps by an angle drawn uniformly from ``degree``
    ((lo, hi), or a positive number d for (-d, d)). New pixels get ``pad_val`` in the image and
    ``seg_pad_val`` in label maps. ``center`` (x, y) and ``auto_bound`` as in :func:`rotate_image`.
    Unlike MMSegmentation, ``img_shape`` is updated when ``auto_bound`` changes the size."""

    def __init__(self, prob: float, degree: float | Sequence[float], pad_val: Any = 0, seg_pad_val: int = 255,
                 center: Sequence[float] | None = None, auto_bound: bool = False):
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if isinstance(degree, numbers.Number):
            if degree <= 0:
                raise ValueError(f"degree {degree} should be positive")
            degree = (-degree, degree)
        if len(degree) != 2:
            raise ValueError(f"degree must be a number or (min, max), got {degree}")
        if center is not None and auto_bound:
            raise ValueError("RandomRotate: auto_bound and center cannot be used together")
        self.prob = prob
        self.degree = (min(degree), max(degree))
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val
        self.center = None if center is None else tuple(center)
        self.auto_bound = auto_bound

    def __call__(self, results: dict) -> dict:
        rotate = np.random.rand() < self.prob
        angle = np.random.uniform(*self.degree)
        if rotate:
            results["img"] = rotate_image(results["img"], angle, self.center, self.auto_bound, self.pad_val,
                                          "bilinear")
            for key in results.get("seg_fields", []):
                results[key] = rotate_image(results[key], angle, self.center, self.auto_bound, self.seg_pad_val,
                                            "nearest")
            results["img_shape"] = results["img"].shape[:2]
        return results


class Pad:
    """Pad image and label maps at the bottom and right: to ``size`` (w, h), or to the next multiple of
    ``size_divisor`` (after squaring with ``pad_to_square``). ``pad_val`` is a number for the image (label
    maps get 255) or dict(img=..., seg=...). Records ``pad_shape`` (the padded image's shape),
    ``pad_fixed_size``, ``pad_size_divisor`` and ``img_shape``."""

    def __init__(self, size: Sequence[int] | None = None, size_divisor: int | None = None,
                 pad_to_square: bool = False, pad_val: float | dict | None = None, padding_mode: str = "constant"):
        if pad_to_square:
            if size is not None:
                raise ValueError("Pad: size must be None with pad_to_square")
        elif (size is None) == (size_divisor is None):
            raise ValueError("Pad needs exactly one of size and size_divisor")
        if padding_mode not in PAD_MODES:
            raise ValueError(f"padding_mode must be one of {sorted(PAD_MODES)}, got {padding_mode!r}")
        if pad_val is None:
            pad_val = {"img": 0, "seg": 255}
        elif isinstance(pad_val, numbers.Number):
            pad_val = {"img": pad_val, "seg": 255}
        self.size = None if size is None else tuple(size)
        self.size_divisor = size_divisor
        self.pad_to_square = pad_to_square
        self.pad_val = dict(pad_val)
        self.padding_mode = padding_mode

    def target_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) after padding (never smaller than the input)."""
        if self.pad_to_square:
            height = width = max(height, width)
        if self.size_divisor is not None:
            d = self.size_divisor
            return -(-height // d) * d, -(-width // d) * d
        if self.size is not None:
            return self.size[1], self.size[0]
        return height, width

    def _pad(self, array: np.ndarray, height: int, width: int, value: Any) -> np.ndarray:
        if isinstance(value, int) and array.ndim == 3:
            value = (value,) * array.shape[2]
        bottom, right = max(height - array.shape[0], 0), max(width - array.shape[1], 0)
        return cv2.copyMakeBorder(array, 0, bottom, 0, right, PAD_MODES[self.padding_mode], value=value)

    def __call__(self, results: dict) -> dict:
        height, width = self.target_shape(*results["img"].shape[:2])
        results["img"] = self._pad(results["img"], height, width, self.pad_val.get("img", 0))
        results["pad_shape"] = results["img"].shape
        results["pad_fixed_size"] = self.size
        results["pad_size_divisor"] = self.size_divisor
        results["img_shape"] = results["img"].shape[:2]
        for key in results.get("seg_fields", []):
            results[key] = self._pad(results[key], *results["pad_shape"][:2], self.pad_val.get("seg", 255))
        return results
