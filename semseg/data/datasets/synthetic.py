"""A built-in synthetic dataset: textured shapes on a textured background, learnable in minutes on a CPU.

Every sample is generated on demand from ``(seed, split, index)``, so it is the same in every process and
worker, needs no files, and ``train`` / ``val`` / ``test`` differ. Class 0 is the background; each other
class has its own color and stripe texture (orientation, period), drawn as rectangles, ellipses or
triangles of random size and place, with per-shape color jitter and per-pixel noise. Each image holds
every class at least once before any repeats (a later shape may still cover part of an earlier one).
``binary=True`` keeps the images and labels every shape 1 (``foreground``) whatever its kind: a two-class
task for one-channel (sigmoid) models.

``SyntheticDataset`` serves the samples in memory through a config's pipeline: the generated image and
label are put in the results dict, so the pipeline's file loading steps (``LoadImageFromFile``,
``LoadAnnotations``) are skipped and a file dataset's pipeline works unchanged. ``write_synthetic_dataset``
writes the same samples as PNG files in the ``BaseSegDataset`` layout, for the folder dataset to read.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from semseg.data.transforms import Compose, LoadAnnotations, LoadImageFromFile, LoadImageFromNDArray

SPLITS = {"train": 0, "val": 1, "test": 2}


BINARY_METAINFO = {"classes": ("background", "foreground"), "palette": [[110, 110, 110], [255, 190, 0]]}


def synthetic_metainfo(num_classes: int = 5, binary: bool = False) -> dict:
    """Class names (``background``, ``shape_1``, ...) and palette (each class's base color, RGB); with
    ``binary``, ``background`` and ``foreground``."""
    if binary:
        return copy.deepcopy(BINARY_METAINFO)
    colors = class_colors(num_classes)
    return {"classes": ("background",) + tuple(f"shape_{k}" for k in range(1, num_classes)),
            "palette": [[int(c) for c in color[::-1]] for color in colors]}


def class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 3) BGR base colors: gray background, then hues spread around the color wheel."""
    if num_classes < 2:
        raise ValueError(f"the synthetic dataset needs at least 2 classes, got {num_classes}")
    hsv = np.zeros((1, num_classes, 3), np.uint8)
    hsv[0, 1:, 0] = (np.arange(num_classes - 1) * 180 // (num_classes - 1)).astype(np.uint8)
    hsv[0, 1:, 1] = 190
    hsv[0, 1:, 2] = 210
    colors = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0].astype(np.float32)
    colors[0] = 110.0
    return colors


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of one rectangle, ellipse or triangle of random size, place and angle."""
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(0.1, 0.25, size=2) * side
    kind = rng.integers(3)
    if kind == 0:
        angle = rng.uniform(0, 90)
        box = cv2.boxPoints(((cx, cy), (2 * rx, 2 * ry), angle))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    elif kind == 1:
        cv2.ellipse(mask, (round(cx), round(cy)), (max(1, round(rx)), max(1, round(ry))),
                    rng.uniform(0, 180), 0, 360, 1, thickness=-1)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        angles += rng.uniform(-0.4, 0.4, size=3)
        points = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def _texture(rng: np.random.Generator, k: int, num_classes: int, ys: np.ndarray, xs: np.ndarray,
             color: np.ndarray) -> np.ndarray:
    """(H, W, 3) float texture of class k: its color, jittered, with stripes of its angle and period."""
    angle = np.pi * k / num_classes
    period = 3.0 + 2.0 * (k % 3)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period + phase)
    base = color + rng.normal(0, 10, size=3)
    return base + 30.0 * stripes[..., None]


def generate_sample(index: int, img_size: int | Sequence[int] = (64, 64), num_classes: int = 5, seed: int = 0,
                    split: str = "train", binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of a split: (H, W, 3) uint8 BGR image and (H, W) uint8 labels in 0..num_classes-1
    (with ``binary``: 0 background, 1 any shape; the image is the same)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    height, width = (img_size, img_size) if isinstance(img_size, int) else map(int, img_size)
    rng = np.random.default_rng([seed, SPLITS[split], index])
    colors = class_colors(num_classes)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)

    blobs = rng.normal(0, 1, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    image = colors[0] + 25.0 * cv2.resize(blobs, (width, height), interpolation=cv2.INTER_LINEAR)
    label = np.zeros((height, width), np.uint8)
    shape_classes = list(rng.permutation(np.arange(1, num_classes)))
    extra = int(rng.integers(0, num_classes))
    shape_classes += list(rng.integers(1, num_classes, size=extra))
    for k in shape_classes[::-1]:  # the guaranteed one-per-class shapes are drawn last, on top
        mask = _shape_mask(rng, height, width)
        image[mask] = _texture(rng, int(k), num_classes, ys, xs, colors[k])[mask]
        label[mask] = k
    image += rng.normal(0, 8, size=image.shape).astype(np.float32)
    if binary:
        label = (label > 0).astype(np.uint8)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


class LoadAnnotationsFromMemory:
    """``LoadAnnotations`` for a generated sample: the label waiting in ``results['generated_label']``
    becomes ``gt_seg_map`` at the step where the file would be read, so transforms before it (a test
    pipeline's Resize) leave the label at its original size, as with files."""

    def __call__(self, results: dict) -> dict:
        results["gt_seg_map"] = results.pop("generated_label")
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results


def _from_memory(pipeline: Sequence[dict | Callable]) -> list[dict | Callable]:
    """The pipeline with its file loaders swapped for in-memory ones (inside ``TestTimeAug`` too)."""
    steps = []
    for step in pipeline:
        name = step.get("type") if isinstance(step, dict) else type(step).__name__
        if name == "LoadImageFromFile" or isinstance(step, LoadImageFromFile):
            steps.append(LoadImageFromNDArray())
        elif name == "LoadAnnotations" or isinstance(step, LoadAnnotations):
            steps.append(LoadAnnotationsFromMemory())
        elif name == "TestTimeAug" and isinstance(step, dict):
            steps.append({**step, "transforms": [_from_memory(group) for group in step["transforms"]]})
        else:
            steps.append(step)
    return steps


class SyntheticDataset(Dataset):
    """``num_samples`` generated samples of one split, run through ``pipeline`` from memory.

    Each sample's results dict starts with ``img`` (H, W, 3) uint8 BGR and ``generated_label`` (H, W)
    uint8; the pipeline's file loading steps are replaced by in-memory ones (``LoadImageFromNDArray``,
    ``LoadAnnotationsFromMemory``) at the same positions. ``num_classes`` is the number of kinds drawn
    (background included); ``binary`` labels every shape 1, so the dataset has two classes.
    """

    def __init__(self, num_samples: int = 64, img_size: int | Sequence[int] = (64, 64), num_classes: int = 5,
                 seed: int = 0, split: str = "train", pipeline: Sequence[dict | Callable] = (),
                 test_mode: bool = False, ignore_index: int = 255, binary: bool = False):
        if split not in SPLITS:
            raise ValueError(f"SyntheticDataset: split must be one of {sorted(SPLITS)}, got {split!r}")
        self.num_samples = int(num_samples)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.split = split
        self.test_mode = test_mode
        self.ignore_index = ignore_index
        self.binary = bool(binary)
        self._metainfo = synthetic_metainfo(self.num_classes, self.binary)
        self._metainfo.update(label_map=None, reduce_zero_label=False)
        self.pipeline = Compose(_from_memory(pipeline))

    @property
    def metainfo(self) -> dict:
        """``classes``, ``palette``, ``label_map`` (None) and ``reduce_zero_label`` (False)."""
        return copy.deepcopy(self._metainfo)

    def __len__(self) -> int:
        return self.num_samples

    def get_data_info(self, idx: int) -> dict:
        """The results dict of sample ``idx`` before the pipeline (generated image and labels)."""
        if not -self.num_samples <= idx < self.num_samples:
            raise IndexError(f"SyntheticDataset: index {idx} out of range for {self.num_samples} samples")
        idx %= self.num_samples
        image, label = generate_sample(idx, self.img_size, self.num_classes, self.seed, self.split, self.binary)
        return {"img": image, "generated_label": label, "img_shape": image.shape[:2],
                "ori_shape": image.shape[:2], "seg_fields": [], "label_map": None, "reduce_zero_label": False,
                "sample_idx": idx}

    def __getitem__(self, idx: int) -> Any:
        data = self.pipeline(self.get_data_info(idx))
        if data is None:
            raise RuntimeError(f"SyntheticDataset: the pipeline returned None for sample {idx}")
        return data


def write_synthetic_dataset(root: str | os.PathLike, num_train: int = 32, num_val: int = 8,
                            img_size: int | Sequence[int] = (64, 64), num_classes: int = 5,
                            seed: int = 0, binary: bool = False) -> Path:
    """Write the synthetic samples as PNGs: ``img_dir/{train,val}/00000.png``, ``ann_dir/...`` and
    ``classes.txt``. Returns ``root``.

    Read them back with ``dict(type='BaseSegDataset', data_root=root, img_suffix='.png',
    data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
    metainfo=synthetic_metainfo(num_classes, binary))``: the arrays are those ``SyntheticDataset`` serves.
    """
    root = Path(root)
    for split, count in (("train", num_train), ("val", num_val)):
        img_dir, ann_dir = root / "img_dir" / split, root / "ann_dir" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for idx in range(count):
            image, label = generate_sample(idx, img_size, num_classes, seed, split, binary)
            for path, array in ((img_dir / f"{idx:05d}.png", image), (ann_dir / f"{idx:05d}.png", label)):
                if not cv2.imwrite(str(path), array):
                    raise OSError(f"cannot write {path}")
    names = synthetic_metainfo(num_classes, binary)["classes"]
    (root / "classes.txt").write_text("".join(name + "\n" for name in names))
    return root
