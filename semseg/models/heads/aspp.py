"""ASPPHead: image pooling plus parallel atrous convolutions (DeepLabV3, arXiv:1706.05587)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn import resize


class ASPPHead(BaseDecodeHead):
    """Image pooling plus atrous branches, concatenated and fused by a 3x3 ``bottleneck``.

    Concatenation order: ``[image_pool, aspp_modules[0], aspp_modules[1], ...]``.

    Args:
        dilations: one branch per dilation rate.
        **kwargs: :class:`BaseDecodeHead` arguments.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, dilations: Sequence[int] = (1, 6, 12, 18), **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dilations, (list, tuple)):
            raise TypeError(f"dilations must be a list or tuple, got {dilations!r}")
        self.dilations = dilations
        # Sequential so the keys read image_pool.1.conv.weight (index 0 is the parameter-free pool).
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), self.conv_block(self.in_channels, self.channels, 1))
        self.aspp_modules = self._build_branches()
        self.bottleneck = self.conv_block((len(dilations) + 1) * self.channels, self.channels, 3, padding=1)

    def _build_branches(self) -> nn.ModuleList:
        return nn.ModuleList(self._branch(dilation) for dilation in self.dilations)

    def _branch(self, dilation: int) -> nn.Module:
        """One atrous branch: 1x1 for dilation 1, else 3x3 with that dilation (size-preserving)."""
        if dilation == 1:
            return self.conv_block(self.in_channels, self.channels, 1)
        return self.conv_block(self.in_channels, self.channels, 3, padding=dilation, dilation=dilation)

    def aspp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, h, w) -> ``bottleneck`` output (N, channels, h, w)."""
        pooled = resize(self.image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=self.align_corners)
        return self.bottleneck(torch.cat([pooled, *(branch(x) for branch in self.aspp_modules)], dim=1))

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        return self.aspp_forward(self.transform_inputs(inputs))
