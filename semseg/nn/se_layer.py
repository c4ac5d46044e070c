"""Squeeze-and-excitation: per-channel gates from globally pooled features (Hu et al., CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.nn.conv_module import ConvModule
from semseg.nn.make_divisible import make_divisible

_SE_ACTS = (dict(type="ReLU"), dict(type="HSigmoid", bias=3.0, divisor=6.0))


class SELayer(nn.Module):
    """Global average pool, 1x1 squeeze conv + act, 1x1 excite conv + gate act, then scale the input.

    Children ``conv1`` / ``conv2`` are ConvModules with biases and no norm (MMSegmentation's keys
    ``se.conv1.conv.weight``, ``se.conv1.conv.bias``, ...). The squeezed width is
    ``make_divisible(channels // ratio, 8)``.

    Args:
        channels: input (and output) channels.
        ratio: squeeze ratio.
        conv_cfg: conv layer config.
        act_cfg: one activation config for both convs, or a pair (squeeze, gate); by default ReLU and
            the hard sigmoid ``clamp((x + 3) / 6, 0, 1)`` of MobileNetV3.
    """

    def __init__(self, channels: int, ratio: int = 16, conv_cfg: dict | None = None,
                 act_cfg: dict | Sequence[dict] = _SE_ACTS):
        super().__init__()
        acts = (act_cfg, act_cfg) if isinstance(act_cfg, dict) else tuple(act_cfg)
        if len(acts) != 2 or not all(isinstance(a, dict) for a in acts):
            raise ValueError(f"act_cfg must be a dict or a pair of dicts, got {act_cfg!r}")
        squeezed = make_divisible(channels // ratio, 8)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = ConvModule(channels, squeezed, 1, conv_cfg=conv_cfg, act_cfg=acts[0])
        self.conv2 = ConvModule(squeezed, channels, 1, conv_cfg=conv_cfg, act_cfg=acts[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), each channel scaled by its gate in [0, 1] for the default gate."""
        return x * self.conv2(self.conv1(self.global_avgpool(x)))  # gates: (N, C, 1, 1)
