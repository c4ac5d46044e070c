"""Inference strategies as plain functions over a segmentor and a normalized batch.

Each takes ``model`` (anything with ``encode_decode(x) -> logits at x's size`` and ``out_channels``)
and x (N, 3, H, W), and returns logits (N, C, H, W) at x's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from semseg.nn import resize


def whole_inference(model, x: torch.Tensor) -> torch.Tensor:
    """One forward pass over the whole image."""
    return model.encode_decode(x)


def slide_windows(height: int, width: int, crop: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Crop windows ``(y1, y2, x1, x2)`` that tile an image as MMSegmentation's slide inference does.

    Windows start every ``stride`` pixels; the last one in each direction is shifted back to end at the
    border, and a crop larger than the image is clipped to it.
    """
    crop_h, crop_w = crop
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * stride_h + crop_h, height)
            x2 = min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def slide_inference(model, x: torch.Tensor, crop_size: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Average the logits of overlapping crops (each crop's logits at the crop's size)."""
    batch, _, height, width = x.shape
    logits = x.new_zeros((batch, model.out_channels, height, width))
    counts = x.new_zeros((1, 1, height, width))
    for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride):
        logits[:, :, y1:y2, x1:x2] += model.encode_decode(x[:, :, y1:y2, x1:x2])
        counts[:, :, y1:y2, x1:x2] += 1
    return logits / counts


def tta_inference(
    model,
    x: torch.Tensor,
    scale_ratios: Sequence[float] = (1.0,),
    flip: bool = True,
    flip_direction: Sequence[str] = ("horizontal",),
) -> torch.Tensor:
    """Test-time augmentation: average class probabilities over scales and flips.

    Each view is x resized by a ratio (bilinear) and optionally flipped; its logits come from
    ``model.inference`` (whole or slide), are flipped back and resized to x's size, then turned into
    probabilities (softmax; sigmoid for one channel) and averaged. Returns averaged probabilities.
    """
    height, width = x.shape[-2:]
    dims = {"horizontal": [3], "vertical": [2]}
    views = [None] + ([dims[d] for d in flip_direction] if flip else [])
    total = None
    for ratio in scale_ratios:
        size = (int(height * ratio + 0.5), int(width * ratio + 0.5))
        scaled = x if size == (height, width) else resize(x, size, mode="bilinear", align_corners=False)
        for flip_dims in views:
            view = scaled if flip_dims is None else scaled.flip(flip_dims)
            logits = model.inference(view)
            if flip_dims is not None:
                logits = logits.flip(flip_dims)
            logits = resize(logits, (height, width), mode="bilinear", align_corners=model.align_corners)
            probs = logits.sigmoid() if logits.shape[1] == 1 else F.softmax(logits, dim=1)
            total = probs if total is None else total + probs
    return total / (len(scale_ratios) * len(views))
