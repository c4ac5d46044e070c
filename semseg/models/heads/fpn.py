"""FPNHead: the semantic branch of Panoptic FPN (Kirillov et al., arXiv:1901.02446)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn import resize


class Upsample2x(nn.Module):
    """Bilinear x2 upsampling as a module, so that it holds its place in a ``scale_heads`` Sequential."""

    def __init__(self, align_corners: bool):
        super().__init__()
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, C, 2h, 2w)."""
        size = (2 * x.shape[2], 2 * x.shape[3])
        return resize(x, size=size, mode="bilinear", align_corners=self.align_corners)


class FPNHead(BaseDecodeHead):
    """Each input level goes through its ``scale_heads`` entry: 3x3 conv blocks, each followed by a x2
    upsampling, as many as it takes from the level's stride to the first one's (one conv, no upsampling,
    for the first level); the levels are summed at the first level's size (bilinear resize).

    Args:
        feature_strides: stride of each input level, powers of 2, the first being the smallest.
        **kwargs: :class:`BaseDecodeHead` arguments; ``in_channels`` and ``in_index`` are lists (the inputs
            are always ``'multiple_select'``).

    Input: features (N, in_channels[i], h_i, w_i), finest first.
    Output of ``forward``: (N, out_channels, h_0, w_0).
    """

    def __init__(self, feature_strides: Sequence[int], **kwargs):
        super().__init__(input_transform="multiple_select", **kwargs)
        if len(feature_strides) != len(self.in_channels):
            raise ValueError(f"FPNHead: feature_strides {list(feature_strides)} and in_channels "
                             f"{self.in_channels} differ in length")
        if min(feature_strides) != feature_strides[0]:
            raise ValueError(f"FPNHead: the first of feature_strides {list(feature_strides)} must be the smallest")
        self.feature_strides = feature_strides
        self.scale_heads = nn.ModuleList()
        for stride, in_channels in zip(feature_strides, self.in_channels, strict=True):
            num_convs = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            layers = []  # conv blocks at even positions, upsamplings at odd ones (checkpoint keys)
            for k in range(num_convs):
                layers.append(self.conv_block(in_channels if k == 0 else self.channels, self.channels, 3,
                                              padding=1))
                if stride != feature_strides[0]:
                    layers.append(Upsample2x(self.align_corners))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected inputs -> (N, channels, h_0, w_0)."""
        inputs = self.transform_inputs(inputs)
        out = self.scale_heads[0](inputs[0])
        for scale_head, x in zip(self.scale_heads[1:], inputs[1:], strict=True):
            out = out + resize(scale_head(x), size=out.shape[2:], mode="bilinear", align_corners=self.align_corners)
        return out
