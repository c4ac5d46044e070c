"""MobileNetV3 backbone (Howard et al., ICCV 2019), segmentation version, with MMSegmentation's names.

``layer0`` is a stride-2 3x3 conv with hard swish, ``layer1`` .. ``layer{n}`` are inverted residual blocks
(some with squeeze-excitation), the last layer a 1x1 conv to 576 (small) or 960 (large) channels. As in
MMSegmentation (and the paper's segmentation models) the network stops downsampling at output stride 8:
every later stride-2 block gets stride 1 instead, and it and the blocks after it are dilated by 2, then 4.
Stride-2 convs pad as TensorFlow's ``'SAME'`` (mmcv's ``Conv2dAdaptivePadding``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.backbones.base import FreezableBackbone, check_pretrained, init_conv_norm
from semseg.nn.conv_module import ConvModule
from semseg.nn.inverted_residual import InvertedResidualV3, pad_same

# Per block: kernel size, mid channels, out channels, with SE, activation, stride (ImageNet network).
ARCH_SETTINGS = {
    "small": (
        (3, 16, 16, True, "ReLU", 2),
        (3, 72, 24, False, "ReLU", 2),
        (3, 88, 24, False, "ReLU", 1),
        (5, 96, 40, True, "HSwish", 2),
        (5, 240, 40, True, "HSwish", 1),
        (5, 240, 40, True, "HSwish", 1),
        (5, 120, 48, True, "HSwish", 1),
        (5, 144, 48, True, "HSwish", 1),
        (5, 288, 96, True, "HSwish", 2),
        (5, 576, 96, True, "HSwish", 1),
        (5, 576, 96, True, "HSwish", 1),
    ),
    "large": (
        (3, 16, 16, False, "ReLU", 1),
        (3, 64, 24, False, "ReLU", 2),
        (3, 72, 24, False, "ReLU", 1),
        (5, 72, 40, True, "ReLU", 2),
        (5, 120, 40, True, "ReLU", 1),
        (5, 120, 40, True, "ReLU", 1),
        (3, 240, 80, False, "HSwish", 2),
        (3, 200, 80, False, "HSwish", 1),
        (3, 184, 80, False, "HSwish", 1),
        (3, 184, 80, False, "HSwish", 1),
        (3, 480, 112, True, "HSwish", 1),
        (3, 672, 112, True, "HSwish", 1),
        (5, 672, 160, True, "HSwish", 2),
        (5, 960, 160, True, "HSwish", 1),
        (5, 960, 160, True, "HSwish", 1),
    ),
}
LAST_CHANNELS = {"small": 576, "large": 960}
# Blocks from this index on (the last stage) have their widths divided by ``reduction_factor``.
REDUCED_FROM = {"small": 8, "large": 12}
MAX_STRIDE = 8  # segmentation version: output stride 8, dilation beyond


class MobileNetV3(FreezableBackbone):
    """MobileNetV3 small or large; returns the outputs of the layers in ``out_indices`` (0 is ``layer0``).

    Args (the config's keys, MMSegmentation's names and defaults):
        arch: ``'small'`` (layers 0..12) or ``'large'`` (layers 0..16).
        conv_cfg, norm_cfg: layer configs (the zoo's configs use BatchNorm with eps 1e-3).
        out_indices: layers whose outputs ``forward`` returns.
        frozen_stages: freeze ``layer0`` .. ``layer{frozen_stages}`` (no grad, eval mode); -1: nothing.
        reduction_factor: divide the widths of the last stage's blocks by this (LR-ASPP's lighter variant).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training.
        with_cp: gradient checkpointing in each block when the input requires grad.
        pretrained, init_cfg: where pretrained weights come from; stored, never downloaded here.

    Attributes:
        out_channels: channels of each returned feature map.
        out_strides: output stride (input size / feature size) of each returned feature map (at most 8);
            any input size works (a stride-2 conv gives ceil(size / 2)).
    """

    def __init__(
        self,
        arch: str = "small",
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN"),  # noqa: B006 - never mutated
        out_indices: Sequence[int] = (0, 1, 12),
        frozen_stages: int = -1,
        reduction_factor: int = 1,
        norm_eval: bool = False,
        with_cp: bool = False,
        pretrained: str | None = None,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        if arch not in ARCH_SETTINGS:
            raise KeyError(f"invalid arch {arch!r} for MobileNetV3; expected one of {sorted(ARCH_SETTINGS)}")
        if not isinstance(reduction_factor, int) or isinstance(reduction_factor, bool) or reduction_factor <= 0:
            raise ValueError(f"reduction_factor must be a positive int, got {reduction_factor!r}")
        settings = ARCH_SETTINGS[arch]
        num_layers = len(settings) + 2
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or i not in range(num_layers) for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must pick layers among 0..{num_layers - 1} for "
                             f"arch {arch!r}")
        if frozen_stages not in range(-1, num_layers):
            raise ValueError(f"frozen_stages must be in -1..{num_layers - 1} for arch {arch!r}, "
                             f"got {frozen_stages}")
        check_pretrained(pretrained, init_cfg)
        self.pretrained, self.init_cfg = pretrained, init_cfg
        self.arch = arch
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.reduction_factor = reduction_factor
        self.norm_eval = norm_eval

        # layer0: TF-'SAME' padded in forward, hence padding 0 here.
        in_channels = 16
        self.layer0 = ConvModule(3, in_channels, 3, stride=2, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                 act_cfg=dict(type="HSwish"))
        self.layers = ["layer0"]
        all_channels, all_strides = [in_channels], [2]
        total_stride, dilation = 2, 1
        for i, (kernel_size, mid, out, with_se, act, stride) in enumerate(settings):
            if i >= REDUCED_FROM[arch]:
                mid, out = mid // reduction_factor, out // reduction_factor
            dilated = stride == 2 and total_stride >= MAX_STRIDE
            if dilated:
                stride, dilation = 1, dilation * 2
            total_stride *= stride
            se_cfg = None
            if with_se:
                se_cfg = dict(channels=mid, ratio=4,
                              act_cfg=(dict(type="ReLU"), dict(type="HSigmoid", bias=3.0, divisor=6.0)))
            block = InvertedResidualV3(
                in_channels, out, mid, kernel_size=kernel_size, stride=stride, dilation=dilation, se_cfg=se_cfg,
                with_expand_conv=in_channels != mid, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                act_cfg=dict(type=act), with_cp=with_cp,
            )
            if dilated:
                # A block that downsamples in the original network keeps no shortcut once dilated (as in
                # MMSegmentation, which decides before removing the stride); it matters with reduction_factor 2.
                block.with_res_shortcut = False
            self.add_module(f"layer{i + 1}", block)
            self.layers.append(f"layer{i + 1}")
            in_channels = out
            all_channels.append(out)
            all_strides.append(total_stride)
        last = f"layer{len(settings) + 1}"
        self.add_module(last, ConvModule(in_channels, LAST_CHANNELS[arch], 1, conv_cfg=conv_cfg,
                                         norm_cfg=norm_cfg, act_cfg=dict(type="HSwish")))
        self.layers.append(last)
        all_channels.append(LAST_CHANNELS[arch])
        all_strides.append(total_stride)
        self.out_channels = [all_channels[i] for i in out_indices]
        self.out_strides = [all_strides[i] for i in out_indices]

        init_conv_norm(self)
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        """``layer0`` .. ``layer{frozen_stages}`` (nothing when ``frozen_stages < 0``)."""
        return [getattr(self, name) for name in self.layers[:self.frozen_stages + 1]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> one (N, out_channels[k], H / out_strides[k], W / out_strides[k]) per k (rounded up)."""
        x = self.layer0(pad_same(x, 3, 2))  # (N, 16, H/2, W/2)
        outs = []
        for i, name in enumerate(self.layers):
            if i > 0:
                x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
