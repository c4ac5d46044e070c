"""DepthwiseSeparableASPPHead: the DeepLabV3+ decoder (arXiv:1802.02611)."""

from __future__ import annotations

import torch
from torch import nn

from semseg.models.heads.aspp import ASPPHead
from semseg.nn import DepthwiseSeparableConvModule, resize


class DepthwiseSeparableASPPHead(ASPPHead):
    """ASPP with depthwise-separable dilated branches, fused with low-level features, then two separable
    3x3 blocks (``sep_bottleneck``).

    The low-level path reads ``inputs[0]`` (the first backbone output, whatever ``in_index`` is), projects
    it with the 1x1 ``c1_bottleneck``, upsamples the ASPP output to its size and concatenates
    ``[aspp, c1]``.

    Args:
        c1_in_channels: channels of ``inputs[0]``; 0 disables the low-level path (then ``c1_channels``
            must be 0 too, as ``sep_bottleneck`` takes ``channels + c1_channels``).
        c1_channels: channels of the projected low-level features.
        **kwargs: :class:`ASPPHead` arguments (``dilations``) and :class:`BaseDecodeHead` ones.

    Output of ``forward``: (N, out_channels, H1, W1) at ``inputs[0]``'s size with the low-level path,
    else at the selected input's size.
    """

    def __init__(self, c1_in_channels: int, c1_channels: int, **kwargs):
        super().__init__(**kwargs)
        if c1_in_channels < 0:
            raise ValueError(f"c1_in_channels must be >= 0, got {c1_in_channels}")
        self.c1_bottleneck = None
        if c1_in_channels > 0:
            self.c1_bottleneck = self.conv_block(c1_in_channels, c1_channels, 1)
        cfgs = dict(norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(self.channels + c1_channels, self.channels, 3, padding=1, **cfgs),
            DepthwiseSeparableConvModule(self.channels, self.channels, 3, padding=1, **cfgs),
        )

    def _branch(self, dilation: int) -> nn.Module:
        """The dilated branches are depthwise-separable (``aspp_modules.<i>.depthwise_conv`` /
        ``.pointwise_conv``); the 1x1 branch stays a plain block."""
        if dilation == 1:
            return super()._branch(dilation)
        return DepthwiseSeparableConvModule(self.in_channels, self.channels, 3, padding=dilation, dilation=dilation,
                                            norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Multi-level features -> (N, channels, H1, W1) (see the class docstring for the size)."""
        out = self.aspp_forward(self.transform_inputs(inputs))
        if self.c1_bottleneck is not None:
            c1 = self.c1_bottleneck(inputs[0])
            out = resize(out, size=c1.shape[2:], mode="bilinear", align_corners=self.align_corners)
            out = torch.cat([out, c1], dim=1)
        return self.sep_bottleneck(out)
