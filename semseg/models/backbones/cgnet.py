"""CGNet backbone (A Light-weight Context Guided Network for Semantic Segmentation, arXiv:1811.08201).

A three-conv stem at 1/2, then two stages of context-guided (CG) blocks at 1/4 and 1/8. Each CG block
(sec. 3.1) joins a local 3x3 depthwise conv (``f_loc``) with a dilated one (``f_sur``, the surrounding
context) and re-weights the joint feature by a squeeze-and-excitation style global context (``f_glo``).
Average-pooled copies of the input image are concatenated back in after the stem and after stage 1
("input injection"). Activations are PReLUs with one slope per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.utils.checkpoint as cp
from torch import nn

from semseg.models.backbones.base import FreezableBackbone, check_pretrained, init_conv_norm
from semseg.nn.conv_module import ConvModule, build_conv
from semseg.nn.norm import build_norm


def _per_channel(act_cfg: dict, channels: int) -> dict:
    """``act_cfg`` with ``num_parameters=channels`` when it is a PReLU (one slope per channel)."""
    return {**act_cfg, "num_parameters": channels} if act_cfg.get("type") == "PReLU" else act_cfg


def _norm_prelu(norm_cfg: dict, channels: int) -> nn.Sequential:
    """Norm then PReLU; keys ``<name>.0`` (norm) and ``<name>.1.weight`` (slopes)."""
    return nn.Sequential(build_norm(norm_cfg, channels)[1], nn.PReLU(channels))


class GlobalContextExtractor(nn.Module):
    """Channel re-weighting: global average pool, ``fc`` (Linear, ReLU, Linear, Sigmoid), multiply.

    (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channel: int, reduction: int = 16):
        super().__init__()
        if not 1 <= reduction <= channel:
            raise ValueError(f"reduction must be in [1, channels={channel}], got {reduction}")
        hidden = channel // reduction
        self.fc = nn.Sequential(nn.Linear(channel, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channel),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))  # (N, C)
        return x * weights[:, :, None, None]


class ContextGuidedBlock(nn.Module):
    """A CG block: ``conv1x1`` (3x3 stride 2 when downsampling), local and dilated depthwise convs
    concatenated, ``bn`` + PReLU, a 1x1 ``bottleneck`` when downsampling, then the global context.

    Without downsampling the joint feature has ``out_channels`` (half local, half surrounding) and the
    input is added back; with it, the block halves the size and has no residual.
    (N, in_channels, H, W) -> (N, out_channels, H', W') with H' = ceil(H / 2) when downsampling.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilation: int = 2,
        reduction: int = 16,
        skip_connect: bool = True,
        downsample: bool = False,
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN", requires_grad=True),  # noqa: B006 - never mutated
        act_cfg: dict = dict(type="PReLU"),  # noqa: B006 - never mutated
        with_cp: bool = False,
    ):
        super().__init__()
        self.with_cp = with_cp
        self.downsample = downsample
        self.skip_connect = skip_connect and not downsample
        channels = out_channels if downsample else out_channels // 2
        kernel_size = 3 if downsample else 1
        self.conv1x1 = ConvModule(in_channels, channels, kernel_size, stride=2 if downsample else 1,
                                  padding=kernel_size // 2, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                  act_cfg=_per_channel(act_cfg, channels))
        self.f_loc = build_conv(conv_cfg, channels, channels, 3, padding=1, groups=channels, bias=False)
        self.f_sur = build_conv(conv_cfg, channels, channels, 3, padding=dilation, dilation=dilation,
                                groups=channels, bias=False)
        self.bn = build_norm(norm_cfg, 2 * channels)[1]  # named `bn` whatever the norm type, as in mmseg
        self.activate = nn.PReLU(2 * channels)
        if downsample:
            self.bottleneck = build_conv(conv_cfg, 2 * channels, out_channels, 1, bias=False)
        self.f_glo = GlobalContextExtractor(out_channels, reduction)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x)
        joint = self.activate(self.bn(torch.cat([self.f_loc(out), self.f_sur(out)], dim=1)))
        if self.downsample:
            joint = self.bottleneck(joint)
        out = self.f_glo(joint)
        return x + out if self.skip_connect else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class InputInjection(nn.Module):
    """``num_downsampling`` 3x3 stride-2 average pools of the input image (keys: none; ``pool`` list)."""

    def __init__(self, num_downsampling: int):
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(num_downsampling))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


class CGNet(FreezableBackbone):
    """CGNet backbone: three outputs at strides 2, 4 and 8.

    Args:
        in_channels: input image channels.
        num_channels: channels of the stem, stage 1 and stage 2.
        num_blocks: CG blocks in stage 1 and stage 2 (the first of each downsamples).
        dilations: dilation of the surrounding-context conv in stage 1 and stage 2.
        reductions: reduction of the global context extractor in stage 1 and stage 2.
        conv_cfg, norm_cfg, act_cfg: conv / norm / activation configs (the zoo uses BN eps 1e-3, PReLU).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training.
        with_cp: gradient checkpointing in the CG blocks.
        pretrained, init_cfg: where pretrained weights come from; stored, never downloaded here.

    Attributes:
        out_channels: ``[num_channels[0] + in_channels, 2 * num_channels[1] + in_channels,
            2 * num_channels[2]]``.
        out_strides: ``[2, 4, 8]``; any input size works (each step rounds up: ceil(H / 2)).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_channels: Sequence[int] = (32, 64, 128),
        num_blocks: Sequence[int] = (3, 21),
        dilations: Sequence[int] = (2, 4),
        reductions: Sequence[int] = (8, 16),
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN", requires_grad=True),  # noqa: B006 - never mutated
        act_cfg: dict = dict(type="PReLU"),  # noqa: B006 - never mutated
        norm_eval: bool = False,
        with_cp: bool = False,
        pretrained: str | None = None,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        for name, value, length in (("num_channels", num_channels, 3), ("num_blocks", num_blocks, 2),
                                    ("dilations", dilations, 2), ("reductions", reductions, 2)):
            if len(value) != length:
                raise ValueError(f"{name} needs {length} entries, got {tuple(value)}")
        if min(num_blocks) < 1:
            raise ValueError(f"each stage needs at least one CG block, got num_blocks={tuple(num_blocks)}")
        check_pretrained(pretrained, init_cfg)
        self.pretrained = pretrained
        self.init_cfg = init_cfg
        self.norm_eval = norm_eval

        stem_channels = num_channels[0]
        self.stem = nn.ModuleList(
            ConvModule(in_channels if i == 0 else stem_channels, stem_channels, 3, stride=2 if i == 0 else 1,
                       padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                       act_cfg=_per_channel(act_cfg, stem_channels))
            for i in range(3)
        )
        self.inject_2x = InputInjection(1)
        self.inject_4x = InputInjection(2)
        channels0 = stem_channels + in_channels
        self.norm_prelu_0 = _norm_prelu(norm_cfg, channels0)

        def stage(in_ch: int, out_ch: int, i: int) -> nn.ModuleList:
            return nn.ModuleList(
                ContextGuidedBlock(in_ch if j == 0 else out_ch, out_ch, dilations[i], reductions[i],
                                   downsample=j == 0, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                                   with_cp=with_cp)
                for j in range(num_blocks[i])
            )

        self.level1 = stage(channels0, num_channels[1], 0)
        channels1 = 2 * num_channels[1] + in_channels
        self.norm_prelu_1 = _norm_prelu(norm_cfg, channels1)
        self.level2 = stage(channels1, num_channels[2], 1)
        channels2 = 2 * num_channels[2]
        self.norm_prelu_2 = _norm_prelu(norm_cfg, channels2)

        self.out_channels = [channels0, channels1, channels2]
        self.out_strides = [2, 4, 8]
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal convs and linears (fan_out), norms at 1 / 0, PReLU slopes at 0 (mmseg's init_cfg)."""
        init_conv_norm(self, conv_types=(nn.Conv2d, nn.Linear))
        for m in self.modules():
            if isinstance(m, nn.PReLU):
                nn.init.zeros_(m.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, H, W) -> features at 1/2, 1/4, 1/8 with ``out_channels`` channels."""
        image_2x, image_4x = self.inject_2x(x), self.inject_4x(x)
        for layer in self.stem:
            x = layer(x)
        x = self.norm_prelu_0(torch.cat([x, image_2x], dim=1))  # (N, C0 + 3, H/2, W/2)
        out0 = x

        x = down1 = self.level1[0](x)
        for block in self.level1[1:]:
            x = block(x)
        x = self.norm_prelu_1(torch.cat([x, down1, image_4x], dim=1))  # (N, 2 * C1 + 3, H/4, W/4)
        out1 = x

        x = down2 = self.level2[0](x)
        for block in self.level2[1:]:
            x = block(x)
        out2 = self.norm_prelu_2(torch.cat([down2, x], dim=1))  # (N, 2 * C2, H/8, W/8)
        return [out0, out1, out2]
