"""GCNet's global context block (arXiv:1904.11492), with mmcv ``ContextBlock``'s parameter names."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

FUSION_TYPES = ("channel_add", "channel_mul")


def _transform(channels: int, planes: int) -> nn.Sequential:
    """The bottleneck applied to the (N, C, 1, 1) context: conv, LayerNorm over [planes, 1, 1], ReLU, conv.

    Keys ``0.weight`` ... ``3.bias`` follow mmcv; the last conv starts at zero so the block starts as the
    identity.
    """
    transform = nn.Sequential(
        nn.Conv2d(channels, planes, kernel_size=1),
        nn.LayerNorm([planes, 1, 1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, channels, kernel_size=1),
    )
    nn.init.zeros_(transform[3].weight)
    nn.init.zeros_(transform[3].bias)
    return transform


class ContextBlock(nn.Module):
    """Pool one context vector per image, transform it, and add it to / multiply it into every position.

    Args:
        in_channels: C, channels in and out.
        ratio: bottleneck width ``planes = int(C * ratio)``.
        pooling_type: ``'att'`` weights positions by a softmax over ``conv_mask(x)`` (a 1x1 conv to one
            channel); ``'avg'`` takes the plain mean.
        fusion_types: non-empty subset of ``('channel_add', 'channel_mul')``; ``channel_mul`` scales x by
            ``sigmoid(channel_mul_conv(context))`` first, then ``channel_add`` adds ``channel_add_conv(context)``.

    Input and output: (N, C, H, W).
    """

    def __init__(self, in_channels: int, ratio: float, pooling_type: str = "att",
                 fusion_types: Sequence[str] = ("channel_add",)):
        super().__init__()
        if pooling_type not in ("att", "avg"):
            raise ValueError(f"pooling_type must be 'att' or 'avg', got {pooling_type!r}")
        if not isinstance(fusion_types, (list, tuple)) or not fusion_types \
                or any(f not in FUSION_TYPES for f in fusion_types):
            raise ValueError(f"fusion_types must be a non-empty list or tuple of {FUSION_TYPES}, "
                             f"got {fusion_types!r}")
        self.in_channels = in_channels
        self.ratio = ratio
        self.planes = int(in_channels * ratio)
        if self.planes < 1:
            raise ValueError(f"int(in_channels * ratio) must be >= 1, got int({in_channels} * {ratio})")
        self.pooling_type = pooling_type
        self.fusion_types = tuple(fusion_types)
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        self.channel_add_conv = _transform(in_channels, self.planes) if "channel_add" in fusion_types else None
        self.channel_mul_conv = _transform(in_channels, self.planes) if "channel_mul" in fusion_types else None

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> context (N, C, 1, 1)."""
        if self.pooling_type == "avg":
            return x.mean(dim=(2, 3), keepdim=True)
        weights = self.conv_mask(x).flatten(2).softmax(dim=-1)  # (N, 1, H*W)
        context = x.flatten(2) @ weights.transpose(1, 2)  # (N, C, 1)
        return context.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out
