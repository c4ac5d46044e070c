"""Fast-SCNN backbone (Fast-SCNN: Fast Semantic Segmentation Network, arXiv:1902.04502, sec. 3.2).

Two branches share a "learning to downsample" front (a conv and two depthwise-separable convs, 1/8):
the high-resolution branch is that feature as is; the low-resolution branch runs a global feature
extractor on it (MobileNetV2 inverted residual blocks to 1/32 and a pyramid pooling module). The feature
fusion module upsamples the low branch and adds it to the high one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.backbones.base import init_conv_norm
from semseg.nn.conv_module import ConvModule
from semseg.nn.depthwise_separable import DepthwiseSeparableConvModule
from semseg.nn.inverted_residual import InvertedResidual
from semseg.nn.pyramid_pooling import PyramidPooling
from semseg.nn.resize import resize


class LearningToDownsample(nn.Module):
    """``conv`` (3x3, stride 2), ``dsconv1`` and ``dsconv2`` (depthwise-separable, stride 2).

    The separable convs use ReLU on the pointwise conv and ``dw_act_cfg`` on the depthwise one, as mmseg's.
    (N, in_channels, H, W) -> (N, out_channels, ceil(H / 8), ceil(W / 8)) (each step rounds up).
    """

    def __init__(
        self,
        in_channels: int,
        dw_channels: Sequence[int],
        out_channels: int,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
        act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        dw_act_cfg: dict | None = None,
    ):
        super().__init__()
        if len(dw_channels) != 2:
            raise ValueError(f"dw_channels needs 2 entries, got {tuple(dw_channels)}")
        self.conv = ConvModule(in_channels, dw_channels[0], 3, stride=2, padding=1, conv_cfg=conv_cfg,
                               norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.dsconv1 = DepthwiseSeparableConvModule(dw_channels[0], dw_channels[1], 3, stride=2, padding=1,
                                                    norm_cfg=norm_cfg, dw_act_cfg=dw_act_cfg)
        self.dsconv2 = DepthwiseSeparableConvModule(dw_channels[1], out_channels, 3, stride=2, padding=1,
                                                    norm_cfg=norm_cfg, dw_act_cfg=dw_act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dsconv2(self.dsconv1(self.conv(x)))


class GlobalFeatureExtractor(nn.Module):
    """Three groups of inverted residual blocks (``bottleneck1..3``), ``ppm`` and the ``out`` 3x3 conv.

    The pyramid pooling branches have ``block_channels[2] // 4`` channels each; ``out`` fuses the last
    group's output with them. (N, in_channels, h, w) -> (N, out_channels, h / prod(strides), ...).
    """

    def __init__(
        self,
        in_channels: int = 64,
        block_channels: Sequence[int] = (64, 96, 128),
        out_channels: int = 128,
        expand_ratio: int = 6,
        num_blocks: Sequence[int] = (3, 3, 3),
        strides: Sequence[int] = (2, 2, 1),
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
        act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        align_corners: bool = False,
    ):
        super().__init__()
        if not len(block_channels) == len(num_blocks) == len(strides) == 3:
            raise ValueError(f"block_channels {tuple(block_channels)}, num_blocks {tuple(num_blocks)} and "
                             f"strides {tuple(strides)} need 3 entries each")
        cfgs = dict(norm_cfg=norm_cfg, act_cfg=act_cfg)

        def group(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
            return nn.Sequential(*(
                InvertedResidual(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, expand_ratio, **cfgs)
                for i in range(blocks)
            ))

        ins = [in_channels, *block_channels[:2]]
        self.bottleneck1 = group(ins[0], block_channels[0], num_blocks[0], strides[0])
        self.bottleneck2 = group(ins[1], block_channels[1], num_blocks[1], strides[1])
        self.bottleneck3 = group(ins[2], block_channels[2], num_blocks[2], strides[2])
        self.ppm = PyramidPooling(pool_scales, block_channels[2], block_channels[2] // 4, conv_cfg=conv_cfg,
                                  align_corners=align_corners, **cfgs)
        self.out = ConvModule(block_channels[2] * 2, out_channels, 3, padding=1, conv_cfg=conv_cfg, **cfgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck3(self.bottleneck2(self.bottleneck1(x)))
        return self.out(torch.cat([x, *self.ppm(x)], dim=1))


class FeatureFusionModule(nn.Module):
    """Upsample the low-resolution feature, ``dwconv`` (3x3, groups = out_channels) and ``conv_lower_res``
    (1x1, linear) on it, ``conv_higher_res`` (1x1, linear) on the high one, add, ReLU.

    (N, higher_in_channels, h, w), (N, lower_in_channels, h', w') -> (N, out_channels, h, w).
    """

    def __init__(
        self,
        higher_in_channels: int,
        lower_in_channels: int,
        out_channels: int,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
        dwconv_act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        conv_act_cfg: dict | None = None,
        align_corners: bool = False,
    ):
        super().__init__()
        self.align_corners = align_corners
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.dwconv = ConvModule(lower_in_channels, out_channels, 3, padding=1, groups=out_channels,
                                 act_cfg=dwconv_act_cfg, **cfgs)
        self.conv_lower_res = ConvModule(out_channels, out_channels, 1, act_cfg=conv_act_cfg, **cfgs)
        self.conv_higher_res = ConvModule(higher_in_channels, out_channels, 1, act_cfg=conv_act_cfg, **cfgs)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, higher: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        lower = resize(lower, size=higher.shape[2:], mode="bilinear", align_corners=self.align_corners)
        lower = self.conv_lower_res(self.dwconv(lower))
        return self.relu(self.conv_higher_res(higher) + lower)


class FastSCNN(nn.Module):
    """Fast-SCNN backbone; outputs ``[higher_res, lower_res, fusion]`` picked by ``out_indices``.

    Args:
        in_channels: input image channels.
        downsample_dw_channels: output channels of the first conv and the first separable conv of the
            learning-to-downsample module.
        global_in_channels: its output channels (the high-resolution feature); must equal
            ``higher_in_channels``.
        global_block_channels, global_block_strides: channels and strides of the three inverted
            residual groups (three blocks each, expand ratio 6).
        global_out_channels: output channels of the global feature extractor; must equal
            ``lower_in_channels``.
        fusion_out_channels: output channels of the feature fusion module.
        out_indices: which of the three features to return (the zoo uses all three: the decode head reads
            the fusion output, the two auxiliary heads the others).
        conv_cfg, norm_cfg, act_cfg: layer configs.
        align_corners: of the bilinear resizes (pyramid pooling, fusion).
        dw_act_cfg: activation of the depthwise convs of the separable convs (None: none).
        init_cfg: stored, never used to download here.

    Attributes:
        out_channels: ``[global_in_channels, global_out_channels, fusion_out_channels]`` at ``out_indices``.
        out_strides: ``[8, 8 * prod(global_block_strides), 8]`` at ``out_indices``. Any input size
            works (the strided convs round up; the fusion resizes to the high branch's size).
    """

    def __init__(
        self,
        in_channels: int = 3,
        downsample_dw_channels: Sequence[int] = (32, 48),
        global_in_channels: int = 64,
        global_block_channels: Sequence[int] = (64, 96, 128),
        global_block_strides: Sequence[int] = (2, 2, 1),
        global_out_channels: int = 128,
        higher_in_channels: int = 64,
        lower_in_channels: int = 128,
        fusion_out_channels: int = 128,
        out_indices: Sequence[int] = (0, 1, 2),
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
        act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        align_corners: bool = False,
        dw_act_cfg: dict | None = None,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        if global_in_channels != higher_in_channels:
            raise ValueError(f"global_in_channels ({global_in_channels}) must equal higher_in_channels "
                             f"({higher_in_channels}): both are the learning-to-downsample output")
        if global_out_channels != lower_in_channels:
            raise ValueError(f"global_out_channels ({global_out_channels}) must equal lower_in_channels "
                             f"({lower_in_channels}): both are the global feature extractor output")
        out_indices = tuple(out_indices)
        if not out_indices or not all(-3 <= i <= 2 for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must pick among 0, 1, 2")
        self.out_indices = out_indices
        self.init_cfg = init_cfg
        self.learning_to_downsample = LearningToDownsample(
            in_channels, downsample_dw_channels, global_in_channels, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
            act_cfg=act_cfg, dw_act_cfg=dw_act_cfg)
        self.global_feature_extractor = GlobalFeatureExtractor(
            global_in_channels, global_block_channels, global_out_channels, strides=global_block_strides,
            conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, align_corners=align_corners)
        self.feature_fusion = FeatureFusionModule(
            higher_in_channels, lower_in_channels, fusion_out_channels, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
            dwconv_act_cfg=act_cfg, align_corners=align_corners)

        lower_stride = 8
        for stride in global_block_strides:
            lower_stride *= stride
        all_channels = [global_in_channels, global_out_channels, fusion_out_channels]
        all_strides = [8, lower_stride, 8]
        self.out_channels = [all_channels[i] for i in out_indices]
        self.out_strides = [all_strides[i] for i in out_indices]
        init_conv_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, H, W) -> the features at ``out_indices`` of [high (1/8), low (1/32), fusion (1/8)]."""
        higher = self.learning_to_downsample(x)
        lower = self.global_feature_extractor(higher)
        fusion = self.feature_fusion(higher, lower)
        outs = [higher, lower, fusion]
        return [outs[i] for i in self.out_indices]
