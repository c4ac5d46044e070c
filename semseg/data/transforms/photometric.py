"""Photometric transforms: they change image colors and leave label maps alone."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def _affine(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """uint8 ``values * alpha + beta`` in float32, clipped to [0, 255] and truncated."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """Random brightness, contrast, saturation and hue changes of a BGR uint8 image, each applied with
    probability 1/2, contrast either first or last (after brightness / after hue).

    Draws from numpy's global generator in MMSegmentation's order, so a seeded run matches the oracle:
    ``randint(2)`` (+ ``uniform(-brightness_delta, brightness_delta)``); ``randint(2)`` for the contrast
    position; [contrast: ``randint(2)`` (+ ``uniform(*contrast_range)``)]; saturation ``randint(2)``
    (+ ``uniform(*saturation_range)``); hue ``randint(2)`` (+ ``randint(-hue_delta, hue_delta)``, upper
    bound excluded); [contrast]. Saturation and hue act on cv2's 8-bit HSV (hue in [0, 180)).
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18):
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def brightness(self, image: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            return _affine(image, beta=np.random.uniform(-self.brightness_delta, self.brightness_delta))
        return image

    def contrast(self, image: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            return _affine(image, alpha=np.random.uniform(*self.contrast_range))
        return image

    def saturation(self, image: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
            hsv[:, :, 1] = _affine(hsv[:, :, 1], alpha=np.random.uniform(*self.saturation_range))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return image

    def hue(self, image: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
            shift = np.random.randint(-self.hue_delta, self.hue_delta)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + shift) % 180
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return image

    def __call__(self, results: dict) -> dict:
        image = self.brightness(results["img"])
        contrast_first = np.random.randint(2) == 1
        if contrast_first:
            image = self.contrast(image)
        image = self.hue(self.saturation(image))
        if not contrast_first:
            image = self.contrast(image)
        results["img"] = image
        return results
