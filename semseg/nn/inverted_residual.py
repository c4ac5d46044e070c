"""Inverted residual blocks of MobileNetV2 (Sandler et al., CVPR 2018) and MobileNetV3 (Howard et al.,
ICCV 2019): expand with a 1x1 conv, filter depthwise, project back with a linear 1x1 conv, and add the
input when the shapes allow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from semseg.nn.conv_module import ConvModule
from semseg.nn.se_layer import SELayer


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, dilation: int = 1) -> torch.Tensor:
    """Zero-pad (N, C, H, W) as TensorFlow's ``'SAME'``, so that a conv with no padding gives
    ceil(H / stride) x ceil(W / stride); an odd total puts the extra pixel at the bottom / right.

    This is what mmcv's ``Conv2dAdaptivePadding`` does before its convolution; on even sizes with stride 2
    it pads (0, 1), not (1, 1), so it differs from ``padding=kernel_size // 2``.
    """
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class _CheckpointedBlock(nn.Module):
    """A block whose ``forward`` may recompute ``_forward`` in the backward pass (``with_cp``)."""

    with_cp: bool

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class InvertedResidual(_CheckpointedBlock):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise (stride, dilation) -> 1x1 linear projection.

    Children: ``conv`` is a Sequential of ConvModules (``conv.0``, ``conv.1``, ``conv.2``; without the expand
    conv when ``expand_ratio == 1``: ``conv.0``, ``conv.1``), as MMSegmentation's keys. The hidden width is
    ``round(in_channels * expand_ratio)``; the projection has no activation.

    Args:
        in_channels, out_channels: block input and output channels.
        stride: stride of the depthwise conv, 1 or 2.
        expand_ratio: hidden width / input width.
        dilation: dilation (and padding) of the depthwise conv.
        conv_cfg, norm_cfg, act_cfg: layer configs of the three convs.
        with_cp: gradient checkpointing (less memory, more compute) when the input requires grad.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        dilation: int = 1,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
        act_cfg: dict | None = dict(type="ReLU6"),  # noqa: B006 - never mutated
        with_cp: bool = False,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.with_cp = with_cp
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = int(round(in_channels * expand_ratio))
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        layers = [ConvModule(in_channels, hidden, 1, act_cfg=act_cfg, **cfgs)] if expand_ratio != 1 else []
        layers += [
            ConvModule(hidden, hidden, 3, stride=stride, padding=dilation, dilation=dilation, groups=hidden,
                       act_cfg=act_cfg, **cfgs),
            ConvModule(hidden, out_channels, 1, act_cfg=None, **cfgs),
        ]
        self.conv = nn.Sequential(*layers)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride) (rounded up)."""
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class InvertedResidualV3(_CheckpointedBlock):
    """MobileNetV3 block: [1x1 expand] -> kxk depthwise -> [squeeze-excitation] -> 1x1 linear projection.

    Children ``expand_conv`` (absent without ``with_expand_conv``), ``depthwise_conv``, ``se`` (with
    ``se_cfg``), ``linear_conv``. A stride-2 depthwise conv pads as TensorFlow's ``'SAME'`` (mmcv's
    ``Conv2dAdaptivePadding``, see :func:`pad_same`); otherwise it pads ``dilation * (kernel_size // 2)``.

    Args:
        in_channels, out_channels: block input and output channels.
        mid_channels: width of the depthwise conv (must equal ``in_channels`` without the expand conv).
        kernel_size: depthwise kernel size (odd).
        stride: depthwise stride, 1 or 2.
        dilation: depthwise dilation (MobileNetV3 dilates the blocks after output stride 8).
        se_cfg: :class:`SELayer` keyword arguments, or ``None`` for no SE layer.
        with_expand_conv: whether there is a 1x1 expand conv.
        conv_cfg, norm_cfg, act_cfg: layer configs (the projection has no activation).
        with_cp: gradient checkpointing when the input requires grad.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        se_cfg: dict | None = None,
        with_expand_conv: bool = True,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
        act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        with_cp: bool = False,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if not with_expand_conv and mid_channels != in_channels:
            raise ValueError(f"without the expand conv mid_channels ({mid_channels}) must equal in_channels "
                             f"({in_channels})")
        if se_cfg is not None and not isinstance(se_cfg, dict):
            raise TypeError(f"se_cfg must be a dict or None, got {se_cfg!r}")
        self.with_cp = with_cp
        self.with_res_shortcut = stride == 1 and in_channels == out_channels
        self.with_se = se_cfg is not None
        self.with_expand_conv = with_expand_conv
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        if with_expand_conv:
            self.expand_conv = ConvModule(in_channels, mid_channels, 1, act_cfg=act_cfg, **cfgs)
        padding = 0 if stride == 2 else dilation * (kernel_size // 2)
        self.depthwise_conv = ConvModule(mid_channels, mid_channels, kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=mid_channels, act_cfg=act_cfg, **cfgs)
        if self.with_se:
            self.se = SELayer(**se_cfg)
        self.linear_conv = ConvModule(mid_channels, out_channels, 1, act_cfg=None, **cfgs)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))."""
        out = self.expand_conv(x) if self.with_expand_conv else x
        if self.stride == 2:
            out = pad_same(out, self.kernel_size, self.stride, self.dilation)
        out = self.depthwise_conv(out)
        if self.with_se:
            out = self.se(out)
        out = self.linear_conv(out)
        return x + out if self.with_res_shortcut else out
