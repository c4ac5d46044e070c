"""Batch preparation: channel order, normalization and padding (MMSegmentation's SegDataPreProcessor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def pad_to(x: torch.Tensor, height: int, width: int, value: float) -> torch.Tensor:
    """Pad (..., H, W) on the bottom and right to (..., height, width)."""
    return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=value)


def padded_size(
    sizes: Sequence[tuple[int, int]], size: Sequence[int] | None, size_divisor: int | None
) -> tuple[int, int]:
    """The common (H, W) a batch pads to: at least ``size``, at least every image, rounded up to
    ``size_divisor``."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    if size is not None:
        height, width = max(height, size[0]), max(width, size[1])
    if size_divisor:
        height = math.ceil(height / size_divisor) * size_divisor
        width = math.ceil(width / size_divisor) * size_divisor
    return height, width


class SegDataPreProcessor(nn.Module):
    """Turns a list of images (3, H, W) in loading order (BGR from cv2) into a normalized batch.

    Steps: optional BGR->RGB swap, ``(x - mean) / std``, then padding (bottom/right, ``pad_val`` for
    images, ``seg_pad_val`` for labels) to ``size`` / ``size_divisor`` while training, or to
    ``test_cfg['size'|'size_divisor']`` at test time. ``mean`` / ``std`` are not saved in checkpoints.
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        size: Sequence[int] | None = None,
        size_divisor: int | None = None,
        pad_val: float = 0,
        seg_pad_val: float = 255,
        bgr_to_rgb: bool = False,
        rgb_to_bgr: bool = False,
        batch_augments: list | None = None,
        test_cfg: dict | None = None,
    ):
        super().__init__()
        if bgr_to_rgb and rgb_to_bgr:
            raise ValueError("bgr_to_rgb and rgb_to_bgr cannot both be True")
        if batch_augments:
            raise NotImplementedError("batch_augments are not supported")
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together")
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.size = tuple(size) if size is not None else None
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val
        self.swap_channels = bgr_to_rgb or rgb_to_bgr
        self.test_cfg = dict(test_cfg or {})

    def normalize_image(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) in loading order, any dtype -> float (3, H, W), channel-swapped and normalized."""
        image = image.float()
        if self.swap_channels and image.shape[0] == 3:
            image = image.flip(0)
        if self.normalize:
            image = (image - self.mean.to(image.device)) / self.std.to(image.device)
        return image

    def forward(
        self,
        images: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor] | None = None,
        training: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images list of (3, H, W), labels list of (H, W) -> (N, 3, H', W') floats, (N, H', W') long.

        The padding is on the bottom/right, so an image's valid region is ``[:h, :w]`` of its slot.
        """
        normalized = [self.normalize_image(image) for image in images]
        if training:
            size, divisor = self.size, self.size_divisor
        else:
            size, divisor = self.test_cfg.get("size"), self.test_cfg.get("size_divisor")
        height, width = padded_size([tuple(x.shape[-2:]) for x in normalized], size, divisor)
        batch = torch.stack([pad_to(x, height, width, self.pad_val) for x in normalized])
        if labels is None:
            return batch, None
        padded = [pad_to(label.long(), height, width, self.seg_pad_val) for label in labels]
        return batch, torch.stack(padded)
