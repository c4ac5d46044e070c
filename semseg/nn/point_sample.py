"""``point_sample``: read a feature map at points given in normalized [0, 1] x [0, 1] image coordinates."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False,
                 mode: str = "bilinear") -> torch.Tensor:
    """Sample ``input`` (N, C, H, W) at ``points`` (N, P, 2) holding (x, y) in [0, 1] -> (N, C, P).

    (0, 0) is the top-left and (1, 1) the bottom-right corner of the image, read as ``grid_sample`` reads
    -1 and 1 (with ``align_corners=False`` the outer edges of the corner pixels, with ``True`` their
    centres); values outside the map are zero. ``points`` may also be a grid (N, Hg, Wg, 2) -> (N, C, Hg, Wg).
    ``mode='nearest'`` samples labels. Used by PointRend (arXiv:1912.08193).
    """
    if points.dim() not in (3, 4) or points.shape[-1] != 2:
        raise ValueError(f"points must be (N, P, 2) or (N, Hg, Wg, 2), got shape {tuple(points.shape)}")
    grid = points.unsqueeze(2) if points.dim() == 3 else points
    out = F.grid_sample(input, grid * 2.0 - 1.0, mode=mode, align_corners=align_corners)
    return out.squeeze(3) if points.dim() == 3 else out
