"""A learnable scalar factor (mmcv's ``Scale``): the ``gamma`` of DANet's and CCNet's attention."""

from __future__ import annotations

import torch
from torch import nn


class Scale(nn.Module):
    """``x * scale`` with one learnable 0-dim parameter (key ``scale``, as mmcv's)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
