"""PSPHead and its pyramid pooling module (PSPNet, arXiv:1612.01105); UPerHead reuses the module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn import ConvModule, resize


class PyramidPooling(nn.ModuleList):
    """One branch per pool scale: adaptive average pool to ``s x s``, a 1x1 conv block, bilinear upsampling.

    Branch ``i`` is ``Sequential(AdaptiveAvgPool2d, ConvModule)``, so checkpoint keys read
    ``psp_modules.<i>.1.conv.weight``.

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


class PSPHead(BaseDecodeHead):
    """Pyramid pooling over the selected input, then a 3x3 ``bottleneck`` over ``[input, pooled...]``.

    Args:
        pool_scales: output sizes of the pooling branches.
        **kwargs: :class:`BaseDecodeHead` arguments.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_scales, (list, tuple)):
            raise TypeError(f"pool_scales must be a list or tuple, got {pool_scales!r}")
        self.pool_scales = pool_scales
        self.psp_modules = PyramidPooling(pool_scales, self.in_channels, self.channels, self.conv_cfg,
                                          self.norm_cfg, self.act_cfg, self.align_corners)
        self.bottleneck = ConvModule(self.in_channels + len(pool_scales) * self.channels, self.channels, 3,
                                     padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                     act_cfg=self.act_cfg)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))
