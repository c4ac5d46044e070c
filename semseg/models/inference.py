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


def restore_view(model, scores: torch.Tensor, meta: dict) -> torch.Tensor:
    """Logits of one augmented view (1, C, H', W') back on the original image: crop the padding to
    ``img_shape``, undo the view's flip, resize (bilinear) to ``ori_shape``."""
    height, width = meta["img_shape"]
    scores = scores[:, :, :height, :width]
    if meta.get("flip"):
        flip_dims = {"horizontal": [3], "vertical": [2], "diagonal": [2, 3]}[meta.get("flip_direction", "horizontal")]
        scores = scores.flip(flip_dims)
    return resize(scores, size=tuple(meta["ori_shape"]), mode="bilinear", align_corners=model.align_corners,
                  warning=False)


def merge_views(model, views: Sequence[tuple[torch.Tensor, dict]]) -> torch.Tensor:
    """Test-time augmentation over pipeline views, as MMSegmentation's ``--tta``: each view
    ``(x (1, 3, H', W') normalized, meta)`` is inferred (whole or slide), restored to the original image,
    turned into probabilities (softmax; sigmoid for one channel) and averaged -> (1, C, H, W)."""
    total = None
    for x, meta in views:
        logits = restore_view(model, model.inference(x), meta)
        probs = logits.sigmoid() if logits.shape[1] == 1 else F.softmax(logits, dim=1)
        total = probs if total is None else total + probs
    return total / len(views)


def predict_views(model, views: Sequence[dict], device: torch.device) -> tuple[torch.Tensor, bool]:
    """Scores on the original image for one image's packed views (``inputs`` (3, H', W') as loaded,
    ``meta``): one view gives its restored logits, several (from ``TestTimeAug``) their averaged class
    probabilities. Returns ``(scores (1, C, H, W), are_probabilities)``."""
    prepared = [(model.data_preprocessor([view["inputs"].to(device)])[0], view["meta"]) for view in views]
    if len(prepared) == 1:
        x, meta = prepared[0]
        return restore_view(model, model.inference(x), meta), False
    return merge_views(model, prepared), True
