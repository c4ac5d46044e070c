"""FCNHead: a stack of convolutions, optionally concatenated with its input (FCN, arXiv:1411.4038)."""

from __future__ import annotations

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead


class FCNHead(BaseDecodeHead):
    """``num_convs`` conv blocks over the selected input, then ``conv_cat`` over ``[input, convs]``.

    Args:
        num_convs: conv blocks in ``convs``; 0 makes ``convs`` the identity (needs
            ``in_channels == channels``).
        kernel_size: kernel size of every conv block.
        concat_input: concatenate the input with the convs' output and fuse them with ``conv_cat``
            (whose dilation is always 1).
        dilation: dilation of the blocks in ``convs`` (padding keeps the size).
        **kwargs: :class:`BaseDecodeHead` arguments (``in_channels``, ``channels``, ``num_classes``, ...).

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(
        self,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        dilation: int = 1,
        **kwargs,
    ):
        if num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {num_convs}")
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"dilation must be a positive int, got {dilation!r}")
        super().__init__(**kwargs)
        if num_convs == 0 and self.in_channels != self.channels:
            raise ValueError(f"num_convs=0 makes convs the identity, so in_channels ({self.in_channels}) "
                             f"must equal channels ({self.channels})")
        self.num_convs = num_convs
        self.kernel_size = kernel_size
        self.concat_input = concat_input

        def block(in_ch: int, dil: int) -> nn.Module:
            return self.conv_block(in_ch, self.channels, kernel_size, padding=kernel_size // 2 * dil, dilation=dil)

        if num_convs == 0:
            self.convs = nn.Identity()
        else:
            in_chs = [self.in_channels] + [self.channels] * (num_convs - 1)
            self.convs = nn.Sequential(*(block(c, dilation) for c in in_chs))
        if concat_input:
            self.conv_cat = block(self.in_channels + self.channels, 1)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        feats = self.convs(x)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats
