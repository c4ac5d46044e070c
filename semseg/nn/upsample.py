"""``Upsample``: a parameter-free resize by a factor (or to a size), usable inside ``nn.Sequential``."""

from __future__ import annotations

import torch
from torch import nn

from semseg.nn.resize import resize


class Upsample(nn.Module):
    """Resize (N, C, H, W) to ``size``, or to (int(H * scale_factor), int(W * scale_factor)).

    The factor is turned into an output size before interpolating (as MMSegmentation's ``Upsample`` does):
    with ``align_corners=False`` this differs from passing the factor to ``F.interpolate``, whose sampling
    grid uses the factor itself. Holding no parameters, it keeps the positions of its neighbours in a
    ``Sequential`` (``up_convs.0.0.conv`` before it, nothing after it).
    """

    def __init__(self, size: tuple[int, int] | None = None, scale_factor: float | None = None,
                 mode: str = "nearest", align_corners: bool | None = None):
        super().__init__()
        if not size and not scale_factor:
            raise ValueError("Upsample needs a size or a scale_factor")
        self.size = None if not size else tuple(size)
        self.scale_factor = None if not scale_factor else float(scale_factor)
        self.mode, self.align_corners = mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.size or tuple(int(s * self.scale_factor) for s in x.shape[-2:])
        return resize(x, size=size, mode=self.mode, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        target = f"size={self.size}" if self.size else f"scale_factor={self.scale_factor}"
        return f"{target}, mode={self.mode!r}, align_corners={self.align_corners}"
