"""Pyramid pooling (PSPNet, arXiv:1612.01105 sec. 3.2): pooled context at several bin sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.nn.conv_module import ConvModule
from semseg.nn.resize import resize


class PyramidPooling(nn.ModuleList):
    """One branch per pool scale: adaptive average pool to ``s x s``, a 1x1 conv block, bilinear upsampling.

    Branch ``i`` is ``Sequential(AdaptiveAvgPool2d, ConvModule)``, so checkpoint keys read
    ``psp_modules.<i>.1.conv.weight`` (PSPHead, UPerHead).

    Input (N, in_channels, h, w); output a list of ``len(pool_scales)`` tensors (N, channels, h, w).
    """

    def __init__(
        self,
        pool_scales: Sequence[int],
        in_channels: int,
        channels: int,
        conv_cfg: dict | None,
        norm_cfg: dict | None,
        act_cfg: dict | None,
        align_corners: bool,
    ):
        super().__init__(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(scale),
                ConvModule(in_channels, channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg),
            )
            for scale in pool_scales
        )
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = x.shape[2:]
        return [resize(branch(x), size=size, mode="bilinear", align_corners=self.align_corners) for branch in self]
