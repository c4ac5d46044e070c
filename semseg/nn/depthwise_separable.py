"""Depthwise-separable convolution (a depthwise ConvModule followed by a pointwise one)."""

from __future__ import annotations

import torch
from torch import nn

from semseg.nn.conv_module import ConvModule


class DepthwiseSeparableConvModule(nn.Module):
    """``depthwise_conv`` (groups = in_channels) then ``pointwise_conv`` (1x1), as mmcv names them.

    ``dw_*`` / ``pw_*`` configs left as ``'default'`` take the shared ``norm_cfg`` / ``act_cfg``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        dw_norm_cfg: dict | None | str = "default",
        dw_act_cfg: dict | None | str = "default",
        pw_norm_cfg: dict | None | str = "default",
        pw_act_cfg: dict | None | str = "default",
        **conv_kwargs,
    ):
        super().__init__()
        if "groups" in conv_kwargs:
            raise ValueError("DepthwiseSeparableConvModule sets groups itself")

        def pick(value, default):
            return default if value == "default" else value

        self.depthwise_conv = ConvModule(
            in_channels, in_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=in_channels, norm_cfg=pick(dw_norm_cfg, norm_cfg), act_cfg=pick(dw_act_cfg, act_cfg),
            **conv_kwargs,
        )
        self.pointwise_conv = ConvModule(
            in_channels, out_channels, 1, norm_cfg=pick(pw_norm_cfg, norm_cfg),
            act_cfg=pick(pw_act_cfg, act_cfg), **conv_kwargs,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))
