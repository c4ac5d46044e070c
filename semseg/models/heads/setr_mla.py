"""SETRMLAHead: SETR's multi-level feature aggregation decoder (SETR, arXiv:2012.15840, sec. 3.3)."""

from __future__ import annotations

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn.upsample import Upsample


class SETRMLAHead(BaseDecodeHead):
    """Per input, two 3x3 conv blocks to ``mla_channels`` and a bilinear x``up_scale`` resize (``up_convs.i``:
    ``.0``, ``.1`` the conv blocks); the results are concatenated for ``conv_seg``.

    Args:
        mla_channels: channels of each branch; ``channels`` must be ``len(in_channels) * mla_channels``.
        up_scale: resize factor of every branch (sizes floored: int(h * up_scale)).
        **kwargs: :class:`BaseDecodeHead` arguments; the inputs are always selected as a list
            (``input_transform='multiple_select'``), so ``in_channels`` and ``in_index`` are lists.

    Input: the neck's maps, all of one size: (N, in_channels[i], h, w).
    Output of ``forward``: (N, out_channels, h * up_scale, w * up_scale).
    """

    def __init__(self, mla_channels: int = 128, up_scale: float = 4, **kwargs):
        super().__init__(input_transform="multiple_select", **kwargs)
        if self.channels != len(self.in_channels) * mla_channels:
            raise ValueError(f"channels ({self.channels}) must be len(in_channels) * mla_channels "
                             f"({len(self.in_channels)} * {mla_channels}): the branches are concatenated")
        self.mla_channels, self.up_scale = mla_channels, up_scale
        self.up_convs = nn.ModuleList(
            nn.Sequential(
                self.conv_block(c, mla_channels, 3, padding=1),
                self.conv_block(mla_channels, mla_channels, 3, padding=1),
                Upsample(scale_factor=up_scale, mode="bilinear", align_corners=self.align_corners),
            )
            for c in self.in_channels
        )

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected inputs [(N, in_channels[i], h, w)] -> (N, channels, h * up_scale, w * up_scale)."""
        xs = self.transform_inputs(inputs)
        return torch.cat([up_conv(x) for up_conv, x in zip(self.up_convs, xs, strict=True)], dim=1)
