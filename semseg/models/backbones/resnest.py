"""ResNeSt backbone: ResNetV1d whose bottlenecks convolve with split attention.

ResNeSt: Split-Attention Networks (Zhang et al., 2020, sec. 3). The 3x3 conv of each bottleneck produces
``radix`` groups of feature maps ("splits"); a small gate computed from their pooled sum weighs them per
channel (softmax across the splits) before they are summed. With ``avg_down_stride`` a strided block
convolves at full resolution and downsamples with a 3x3 average pool (``avd_layer``) after the attention.
Keys as MMSegmentation's: ``layer1.0.conv2.conv``, ``.bn0``, ``.fc1``, ``.bn1``, ``.fc2``; the block keeps
``bn1`` and ``bn3`` (its second norm lives inside ``conv2``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.backbones.resnet import ResNetV1d, _ResBlock
from semseg.nn.conv_module import build_conv
from semseg.nn.norm import build_norm, norm_name


class SplitAttentionConv2d(nn.Module):
    """A grouped conv into ``radix`` splits of ``channels`` maps, recombined by per-channel attention.

    Args:
        in_channels, channels: input channels and output channels (of each split and of the result).
        kernel_size, stride, padding, dilation: of the conv.
        groups: cardinality; the conv has ``groups * radix`` groups, the gate's 1x1 convs ``groups``.
        radix: number of splits; with 1 the gate is a sigmoid (squeeze-and-excitation).
        reduction_factor: the gate's hidden width is ``max(in_channels * radix // reduction_factor, 32)``.
        conv_cfg, norm_cfg: of the conv and the two norms (``bn0`` after the conv, ``bn1`` in the gate).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        radix: int = 2,
        reduction_factor: int = 4,
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN"),  # noqa: B006 - never mutated
    ):
        super().__init__()
        hidden = max(in_channels * radix // reduction_factor, 32)
        self.radix = radix
        self.groups = groups
        self.conv = build_conv(conv_cfg, in_channels, channels * radix, kernel_size, stride=stride,
                               padding=padding, dilation=dilation, groups=groups * radix, bias=False)
        # mmcv numbers these two norms 0 and 1 after their type: bn0 / bn1 (gn0 / gn1 for GN).
        prefix = norm_name(norm_cfg)
        self.norm0_name, self.norm1_name = f"{prefix}0", f"{prefix}1"
        self.add_module(self.norm0_name, build_norm(norm_cfg, channels * radix)[1])
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, hidden, 1, groups=groups)
        self.add_module(self.norm1_name, build_norm(norm_cfg, hidden)[1])
        self.fc2 = nn.Conv2d(hidden, channels * radix, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, channels, H', W')."""
        x = self.relu(getattr(self, self.norm0_name)(self.conv(x)))  # (N, radix * C, H', W')
        n = x.shape[0]
        splits = x.view(n, self.radix, -1, *x.shape[2:])  # (N, radix, C, H', W')
        pooled = splits.sum(dim=1).mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        gate = self.fc2(self.relu(getattr(self, self.norm1_name)(self.fc1(pooled))))  # (N, radix * C, 1, 1)
        if self.radix == 1:
            return torch.sigmoid(gate) * x
        # fc2's channels run (group, split, channel within the group); the softmax runs across the splits.
        gate = gate.view(n, self.groups, self.radix, -1).transpose(1, 2).softmax(dim=1)
        return (gate.reshape(n, self.radix, -1, 1, 1) * splits).sum(dim=1)


class SplitAttentionBottleneck(_ResBlock):
    """Bottleneck with a split-attention 3x3 conv (``conv2``) and, when strided, an average-pool downsample.

    The middle width is ``planes``, or ``floor(planes * base_width / base_channels) * groups`` when
    ``groups > 1`` (ResNeXt-style). ``style='pytorch'`` strides the 3x3 stage, ``'caffe'`` the first 1x1.
    """

    expansion = 4
    zero_init_last = False  # MMSegmentation's zero_init_residual leaves ResNeSt's blocks alone

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        with_cp: bool = False,
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN"),  # noqa: B006 - never mutated
        groups: int = 1,
        base_width: int = 4,
        base_channels: int = 64,
        radix: int = 2,
        reduction_factor: int = 4,
        avg_down_stride: bool = True,
    ):
        super().__init__(downsample, with_cp)
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        width = planes if groups == 1 else math.floor(planes * base_width / base_channels) * groups
        stride1, stride2 = (1, stride) if style == "pytorch" else (stride, 1)
        self.avg_down_stride = avg_down_stride and stride2 > 1
        self.conv1 = build_conv(conv_cfg, inplanes, width, 1, stride=stride1, bias=False)
        self.conv2 = SplitAttentionConv2d(width, width, 3, stride=1 if self.avg_down_stride else stride2,
                                          padding=dilation, dilation=dilation, groups=groups, radix=radix,
                                          reduction_factor=reduction_factor, conv_cfg=conv_cfg,
                                          norm_cfg=norm_cfg)
        if self.avg_down_stride:
            self.avd_layer = nn.AvgPool2d(3, stride2, padding=1)
        self.conv3 = build_conv(conv_cfg, width, planes * self.expansion, 1, bias=False)
        prefix = norm_name(norm_cfg)
        self.norm_names = (f"{prefix}1", f"{prefix}3")  # after conv1 and conv3
        self.add_module(self.norm_names[0], build_norm(norm_cfg, width)[1])
        self.add_module(self.norm_names[1], build_norm(norm_cfg, planes * self.expansion)[1])

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(getattr(self, self.norm_names[0])(self.conv1(x)))
        out = self.conv2(out)
        if self.avg_down_stride:
            out = self.avd_layer(out)
        return getattr(self, self.norm_names[1])(self.conv3(out))


class ResNeSt(ResNetV1d):
    """ResNeSt backbone: ResNetV1d (deep stem, average-pooled shortcuts) with split-attention bottlenecks.

    Args:
        groups: cardinality of the split-attention conv.
        base_width: width per group when ``groups > 1``.
        radix: splits per group.
        reduction_factor: reduction of the attention gate's hidden width.
        avg_down_stride: strided blocks downsample by a 3x3 average pool after the attention.
        **kwargs: ResNet's arguments (``depth`` 50, 101, 152 or 200, ``stem_channels``, ``strides``, ...);
            ``zero_init_residual`` has no effect, as in MMSegmentation.

    Attributes:
        out_channels, out_strides: as ResNet's (``256 * 2**i`` channels for stage ``i``).
    """

    arch_settings = {
        50: (SplitAttentionBottleneck, (3, 4, 6, 3)),
        101: (SplitAttentionBottleneck, (3, 4, 23, 3)),
        152: (SplitAttentionBottleneck, (3, 8, 36, 3)),
        200: (SplitAttentionBottleneck, (3, 24, 36, 3)),
    }

    def __init__(
        self,
        groups: int = 1,
        base_width: int = 4,
        radix: int = 2,
        reduction_factor: int = 4,
        avg_down_stride: bool = True,
        **kwargs,
    ):
        if radix < 1:
            raise ValueError(f"radix must be at least 1, got {radix}")
        # Read by make_res_layer, which ResNet.__init__ calls: plain values, safe before Module.__init__.
        self.split_attention = dict(groups=groups, base_width=base_width, radix=radix,
                                    reduction_factor=reduction_factor, avg_down_stride=avg_down_stride)
        super().__init__(**kwargs)

    def make_res_layer(self, block: type[_ResBlock], inplanes: int, planes: int, dilations: Sequence[int],
                       stride: int, avg_down: bool, conv_cfg: dict | None, norm_cfg: dict,
                       **block_kwargs) -> nn.Sequential:
        """ResNet's stage, its blocks given the split-attention options and ``base_channels``."""
        return super().make_res_layer(block, inplanes, planes, dilations, stride, avg_down, conv_cfg, norm_cfg,
                                      base_channels=self.base_channels, **self.split_attention, **block_kwargs)
