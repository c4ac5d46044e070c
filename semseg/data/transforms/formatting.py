"""The last steps of a pipeline: derived targets (edges) and packing arrays into tensors."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch


class GenerateEdge:
    """``gt_edge_map`` (H, W) uint8, CE2P's edge target: 1 on pixels whose label differs from a vertical,
    horizontal or diagonal neighbour's (neither being ``ignore_index``), dilated by an ``edge_width``
    square. Each differing pair marks one pixel: the lower (vertical), the left (horizontal) or the upper
    one (diagonals), as MMSegmentation's GenerateEdge does."""

    def __init__(self, edge_width: int = 3, ignore_index: int = 255):
        self.edge_width = edge_width
        self.ignore_index = ignore_index

    def _differs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a != b) & (a != self.ignore_index) & (b != self.ignore_index)

    def __call__(self, results: dict) -> dict:
        label = results["gt_seg_map"]
        edge = np.zeros(label.shape[:2], dtype=np.uint8)
        edge[1:, :][self._differs(label[1:, :], label[:-1, :])] = 1  # marked on the lower pixel
        edge[:, :-1][self._differs(label[:, :-1], label[:, 1:])] = 1  # marked on the left pixel
        edge[:-1, :-1][self._differs(label[:-1, :-1], label[1:, 1:])] = 1  # on the upper-left pixel
        edge[:-1, 1:][self._differs(label[:-1, 1:], label[1:, :-1])] = 1  # on the upper-right pixel
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (self.edge_width, self.edge_width))
        results["gt_edge_map"] = cv2.dilate(edge, kernel)
        results["edge_width"] = self.edge_width
        return results


class PackSegInputs:
    """``img`` (H, W, C) -> ``inputs`` tensor (C, H, W) of the image's dtype; ``gt_seg_map`` ->
    ``gt_sem_seg`` and ``gt_edge_map`` -> ``gt_edge_map``, int64 tensors (H, W); ``meta`` holds the
    ``meta_keys`` present in ``results``."""

    def __init__(self, meta_keys: Sequence[str] = ("img_path", "seg_map_path", "ori_shape", "img_shape",
                                                   "pad_shape", "scale_factor", "flip", "flip_direction",
                                                   "reduce_zero_label")):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        packed = {}
        if "img" in results:
            image = results["img"]
            if image.ndim == 2:
                image = image[..., None]
            packed["inputs"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        for source, target in (("gt_seg_map", "gt_sem_seg"), ("gt_edge_map", "gt_edge_map")):
            if source in results:
                packed[target] = torch.from_numpy(results[source].astype(np.int64))
        packed["meta"] = {key: results[key] for key in self.meta_keys if key in results}
        return packed
