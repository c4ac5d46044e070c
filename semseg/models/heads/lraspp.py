"""LRASPPHead: Lite R-ASPP, the segmentation head of MobileNetV3 (Howard et al., ICCV 2019, sec. 6.4)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn import ConvModule, resize

POOL_SIZE, POOL_STRIDE = 49, (16, 20)  # MMSegmentation's fixed image-pool window (for 512x1024 crops)


class LRASPPHead(BaseDecodeHead):
    """Gate the deepest input with a pooled sigmoid branch, then fuse shallower inputs from deep to shallow.

    The deepest input x goes through ``aspp_conv`` (1x1) and is multiplied by ``image_pool`` (a 49x49
    average pool with stride (16, 20), a 1x1 conv and a sigmoid, resized back to x's size), then through
    ``conv_up_input``. For each shallower input i, from the second deepest to the first, the result is
    resized to input i's size, concatenated with ``convs[i]`` (a 1x1 conv to ``branch_channels[i]``) and
    fused by ``conv_ups[i]``.

    The fixed pool needs the deepest feature map to be at least 49x49: at output stride 8 (the zoo's
    MobileNetV3), an input of at least 392x392 pixels. A smaller one raises a ValueError saying so.

    Args:
        branch_channels: output channels of ``convs``, one per input but the last.
        **kwargs: :class:`BaseDecodeHead` arguments; ``input_transform`` must be ``'multiple_select'``.

    Input: the backbone's list of features; the selected ones are (N, in_channels[i], h_i, w_i).
    Output of ``forward``: (N, out_channels, h_0, w_0).
    """

    def __init__(self, branch_channels: Sequence[int] = (32, 64), **kwargs):
        super().__init__(**kwargs)
        if self.input_transform != "multiple_select":
            raise ValueError(f"LRASPPHead needs input_transform='multiple_select', got {self.input_transform!r}")
        if not isinstance(branch_channels, (list, tuple)) or not all(isinstance(c, int) for c in branch_channels):
            raise TypeError(f"branch_channels must be a tuple of ints, got {branch_channels!r}")
        if len(branch_channels) != len(self.in_channels) - 1:
            raise ValueError(f"branch_channels {tuple(branch_channels)} needs one entry per input but the last "
                             f"({len(self.in_channels) - 1} for in_channels {tuple(self.in_channels)})")
        self.branch_channels = tuple(branch_channels)
        # Children named conv0, conv1 / conv_up0, conv_up1 as MMSegmentation's keys.
        self.convs = nn.Sequential(OrderedDict(
            (f"conv{i}", nn.Conv2d(self.in_channels[i], c, 1, bias=False)) for i, c in enumerate(branch_channels)
        ))
        self.conv_ups = nn.Sequential(OrderedDict(
            (f"conv_up{i}", self.conv_block(self.channels + c, self.channels, 1, bias=False))
            for i, c in enumerate(branch_channels)
        ))
        self.conv_up_input = nn.Conv2d(self.channels, self.channels, 1)
        self.aspp_conv = self.conv_block(self.in_channels[-1], self.channels, 1, bias=False)
        self.image_pool = nn.Sequential(
            nn.AvgPool2d(kernel_size=POOL_SIZE, stride=POOL_STRIDE),
            ConvModule(self.in_channels[-1], self.channels, 1, act_cfg=dict(type="Sigmoid"), bias=False),
        )

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected inputs (N, in_channels[i], h_i, w_i) -> (N, channels, h_0, w_0)."""
        inputs = self.transform_inputs(inputs)
        x = inputs[-1]
        h, w = x.shape[2:]
        if h < POOL_SIZE or w < POOL_SIZE:
            raise ValueError(
                f"LRASPPHead's image pool has a fixed {POOL_SIZE}x{POOL_SIZE} window, so its deepest input must be "
                f"at least {POOL_SIZE}x{POOL_SIZE}, got {h}x{w}: at output stride 8 the image needs at least "
                f"{POOL_SIZE * 8} px a side (pad or resize it, or use slide inference with such crops)")
        gate = resize(self.image_pool(x), size=(h, w), mode="bilinear", align_corners=self.align_corners)
        x = self.conv_up_input(self.aspp_conv(x) * gate)
        for i in reversed(range(len(self.branch_channels))):
            x = resize(x, size=inputs[i].shape[2:], mode="bilinear", align_corners=self.align_corners)
            x = self.conv_ups[i](torch.cat([x, self.convs[i](inputs[i])], dim=1))
        return x
