"""MobileNetV2 backbone (Sandler et al., CVPR 2018) with MMSegmentation's parameter names and options.

A stride-2 3x3 stem conv (``conv1``) and seven layers of inverted residual blocks (``layer1`` ..
``layer7``). Segmentation configs (D8) set strides (1, 2, 2, 1, 1, 1, 1) and dilations
(1, 1, 1, 2, 2, 4, 4). As in MMSegmentation, a layer's stride *and dilation* apply to its first block
only; the other blocks are undilated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.backbones.base import FreezableBackbone, check_pretrained, init_conv_norm
from semseg.nn.conv_module import ConvModule
from semseg.nn.inverted_residual import InvertedResidual
from semseg.nn.make_divisible import make_divisible

# Per layer: expand ratio, output channels (before widen_factor), number of blocks.
ARCH_SETTINGS = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))


class MobileNetV2(FreezableBackbone):
    """MobileNetV2; returns the outputs of the layers in ``out_indices`` (0 is ``layer1``).

    Args (the config's keys, MMSegmentation's names and defaults):
        widen_factor: width multiplier; channels are rounded with :func:`make_divisible` (multiples of 8).
        strides, dilations: per layer (7 each), of its first block.
        out_indices: layers (0..6) whose outputs ``forward`` returns.
        frozen_stages: freeze ``layer1`` .. ``layer{frozen_stages}`` (no grad, eval mode); from 0 on the stem's
            parameters too (its norm keeps updating its statistics, as in MMSegmentation); -1: nothing.
        conv_cfg, norm_cfg, act_cfg: layer configs of every conv.
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training.
        with_cp: gradient checkpointing in each block when the input requires grad.
        pretrained, init_cfg: where pretrained weights come from; stored, never downloaded here.

    Attributes:
        out_channels: channels of each returned feature map.
        out_strides: output stride (input size / feature size) of each returned feature map; any input size
            works (each stride-2 conv gives ceil(size / 2)).
    """

    def __init__(
        self,
        widen_factor: float = 1.0,
        strides: Sequence[int] = (1, 2, 2, 2, 1, 2, 1),
        dilations: Sequence[int] = (1, 1, 1, 1, 1, 1, 1),
        out_indices: Sequence[int] = (1, 2, 4, 6),
        frozen_stages: int = -1,
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN"),  # noqa: B006 - never mutated
        act_cfg: dict = dict(type="ReLU6"),  # noqa: B006 - never mutated
        norm_eval: bool = False,
        with_cp: bool = False,
        pretrained: str | None = None,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        num_layers = len(ARCH_SETTINGS)
        if not len(strides) == len(dilations) == num_layers:
            raise ValueError(f"strides {tuple(strides)} and dilations {tuple(dilations)} need one entry per "
                             f"layer ({num_layers})")
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in range(num_layers) for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must pick layers among 0..{num_layers - 1}")
        if frozen_stages not in range(-1, num_layers):
            raise ValueError(f"frozen_stages must be in -1..{num_layers - 1}, got {frozen_stages}")
        check_pretrained(pretrained, init_cfg)
        self.pretrained, self.init_cfg = pretrained, init_cfg
        self.widen_factor = widen_factor
        self.strides, self.dilations = tuple(strides), tuple(dilations)
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        in_channels = make_divisible(32 * widen_factor, 8)
        self.conv1 = ConvModule(3, in_channels, 3, stride=2, padding=1, **cfgs)
        self.layers: list[str] = []
        all_channels, all_strides, total_stride = [], [], 2
        for i, (expand_ratio, channels, num_blocks) in enumerate(ARCH_SETTINGS):
            out_channels = make_divisible(channels * widen_factor, 8)
            blocks = []
            for j in range(num_blocks):
                first = j == 0
                blocks.append(InvertedResidual(
                    in_channels, out_channels, strides[i] if first else 1, expand_ratio,
                    dilation=dilations[i] if first else 1, with_cp=with_cp, **cfgs,
                ))
                in_channels = out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.layers.append(f"layer{i + 1}")
            total_stride *= strides[i]
            all_channels.append(out_channels)
            all_strides.append(total_stride)
        self.out_channels = [all_channels[i] for i in out_indices]
        self.out_strides = [all_strides[i] for i in out_indices]

        init_conv_norm(self)
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        """``layer1`` .. ``layer{frozen_stages}``."""
        return [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        super()._freeze_stages()
        if self.frozen_stages >= 0:
            # As in MMSegmentation, the stem's parameters are frozen but its norm stays in train mode.
            for param in self.conv1.parameters():
                param.requires_grad = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> one (N, out_channels[k], H / out_strides[k], W / out_strides[k]) per k (rounded up).

        Always a list, also for a single out index (MMSegmentation returns the bare tensor then).
        """
        x = self.conv1(x)  # (N, 32 * widen_factor, H/2, W/2)
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
