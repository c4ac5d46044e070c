"""UPerHead: pyramid pooling on the top level plus an FPN over the others (UPerNet, arXiv:1807.10221)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn import PyramidPooling, resize


class UPerHead(BaseDecodeHead):
    """PSP on the last input gives the top FPN level; 1x1 ``lateral_convs`` give the others.

    Top-down, each level adds the upsampled level above it; the 3x3 ``fpn_convs`` smooth every level
    but the top; all levels are upsampled to the first one's size, concatenated (finest first) and fused
    by the 3x3 ``fpn_bottleneck``. The inputs are always ``'multiple_select'``.

    Args:
        pool_scales: pooling scales of the pyramid pooling on the last input.
        **kwargs: :class:`BaseDecodeHead` arguments; ``in_channels`` and ``in_index`` are lists.

    Input: features (N, in_channels[i], h_i, w_i), finest first.
    Output of ``forward``: (N, out_channels, h_0, w_0).
    """

    def __init__(self, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs):
        if kwargs.pop("input_transform", "multiple_select") != "multiple_select":
            raise ValueError("UPerHead always uses input_transform='multiple_select'")
        super().__init__(input_transform="multiple_select", **kwargs)
        top_channels = self.in_channels[-1]
        self.psp_modules = PyramidPooling(pool_scales, top_channels, self.channels, self.conv_cfg, self.norm_cfg,
                                          self.act_cfg, self.align_corners)
        self.bottleneck = self.conv_block(top_channels + len(pool_scales) * self.channels, self.channels, 3,
                                          padding=1)
        self.lateral_convs = nn.ModuleList(
            self.conv_block(c, self.channels, 1, inplace=False) for c in self.in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            self.conv_block(self.channels, self.channels, 3, padding=1, inplace=False) for _ in self.in_channels[:-1]
        )
        self.fpn_bottleneck = self.conv_block(len(self.in_channels) * self.channels, self.channels, 3, padding=1)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Top input (N, in_channels[-1], h, w) -> (N, channels, h, w)."""
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected inputs -> (N, channels, h_0, w_0)."""
        inputs = self.transform_inputs(inputs)
        levels = [conv(x) for conv, x in zip(self.lateral_convs, inputs[:-1], strict=True)]
        levels.append(self.psp_forward(inputs[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down: add each level to the one below it
            levels[i - 1] = levels[i - 1] + resize(levels[i], size=levels[i - 1].shape[2:], mode="bilinear",
                                                   align_corners=self.align_corners)
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels[:-1], strict=True)]
        outs.append(levels[-1])
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(o, size=size, mode="bilinear", align_corners=self.align_corners)
                            for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))
