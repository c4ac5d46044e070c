"""BiSeNetV2 backbone (BiSeNet V2: Bilateral Network with Guided Aggregation, arXiv:2004.02147, sec. 3-4).

Two branches read the image: a wide, shallow detail branch (1/8) and a narrow, deep semantic branch (a
stem block to 1/4, gather-and-expansion layers to 1/32, a context embedding block). The bilateral guided
aggregation layer gates each branch by the other and fuses them at 1/8. The semantic stages' outputs also
feed the auxiliary heads (the paper's "booster").

Layers are BatchNorm + ReLU throughout, as MMSegmentation 1.2.2 builds them whatever ``norm_cfg`` /
``act_cfg`` the backbone is given (its checkpoints were trained so); see :class:`BiSeNetV2`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.backbones.base import init_conv_norm
from semseg.nn.conv_module import ConvModule
from semseg.nn.depthwise_separable import DepthwiseSeparableConvModule
from semseg.nn.resize import resize

log = logging.getLogger(__name__)

BN = dict(type="BN")
RELU = dict(type="ReLU")


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
            relu: bool = True, bias: bool | str = "auto") -> ConvModule:
    """A ConvModule with BatchNorm and, if ``relu``, ReLU; 'same' padding."""
    return ConvModule(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                      groups=groups, bias=bias, norm_cfg=BN, act_cfg=RELU if relu else None)


def separable_conv(channels_in: int, channels_out: int, stride: int = 1, pointwise_bn: bool = True
                   ) -> DepthwiseSeparableConvModule:
    """3x3 depthwise conv + BN, then a 1x1 conv (+ BN if ``pointwise_bn``, else with a bias); no activation."""
    return DepthwiseSeparableConvModule(channels_in, channels_out, 3, stride=stride, padding=1, dw_norm_cfg=BN,
                                        dw_act_cfg=None, pw_norm_cfg=BN if pointwise_bn else None,
                                        pw_act_cfg=None)


class DetailBranch(nn.Module):
    """``detail_branch``: one stage per channel count, each a stride-2 3x3 conv and one (first stage) or two
    (later stages) stride-1 3x3 convs. (N, in_channels, H, W) -> (N, channels[-1], H / 2**len, ...)."""

    def __init__(self, detail_channels: Sequence[int] = (64, 64, 128), in_channels: int = 3):
        super().__init__()
        stages = []
        for i, channels in enumerate(detail_channels):
            previous = in_channels if i == 0 else detail_channels[i - 1]
            repeats = 1 if i == 0 else 2
            stages.append(nn.Sequential(conv_bn(previous, channels, stride=2),
                                        *(conv_bn(channels, channels) for _ in range(repeats))))
        self.detail_branch = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.detail_branch:
            x = stage(x)
        return x


class StemBlock(nn.Module):
    """``conv_first`` (3x3, stride 2), then two paths to 1/4 — ``convs`` (1x1 to half the channels, 3x3
    stride 2) and ``pool`` (3x3 max pool, stride 2) — concatenated and fused by ``fuse_last`` (3x3).
    (N, in_channels, H, W) -> (N, out_channels, ceil(H / 4), ceil(W / 4))."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16):
        super().__init__()
        self.conv_first = conv_bn(in_channels, out_channels, stride=2)
        self.convs = nn.Sequential(conv_bn(out_channels, out_channels // 2, kernel_size=1),
                                   conv_bn(out_channels // 2, out_channels, stride=2))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.fuse_last = conv_bn(out_channels * 2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x)
        return self.fuse_last(torch.cat([self.convs(x), self.pool(x)], dim=1))


class GELayer(nn.Module):
    """Gather-and-expansion layer (paper fig. 5 b, c).

    ``conv1`` (3x3) gathers; ``dwconv`` expands to ``in_channels * exp_ratio`` with a depthwise 3x3 (at
    stride 2: a linear strided one then a second depthwise 3x3 with ReLU); ``conv2`` (1x1, linear) projects
    to ``out_channels``; the identity (stride 1) or ``shortcut`` (a separable conv, stride 2) is added; ReLU.
    (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, exp_ratio: int = 6, stride: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"GELayer stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 GELayer adds its input, so in_channels ({in_channels}) must equal "
                             f"out_channels ({out_channels})")
        mid_channels = in_channels * exp_ratio
        self.conv1 = conv_bn(in_channels, in_channels)
        if stride == 1:
            self.dwconv = nn.Sequential(conv_bn(in_channels, mid_channels, groups=in_channels))
            self.shortcut = None
        else:
            self.dwconv = nn.Sequential(
                conv_bn(in_channels, mid_channels, stride=2, groups=in_channels, relu=False, bias=False),
                conv_bn(mid_channels, mid_channels, groups=mid_channels))
            self.shortcut = nn.Sequential(separable_conv(in_channels, out_channels, stride=2))
        self.conv2 = nn.Sequential(conv_bn(mid_channels, out_channels, kernel_size=1, relu=False, bias=False))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.conv2(self.dwconv(self.conv1(x))) + identity)


class CEBlock(nn.Module):
    """Context embedding block: ``gap`` (global average pool + BN) and ``conv_gap`` (1x1) give a per-image
    vector that is broadcast-added to the input, then ``conv_last`` (3x3).
    (N, in_channels, h, w) -> (N, out_channels, h, w); in_channels must equal out_channels (the sum)."""

    def __init__(self, in_channels: int = 16, out_channels: int = 16):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(in_channels))
        self.conv_gap = conv_bn(in_channels, out_channels, kernel_size=1)
        self.conv_last = conv_bn(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(x + self.conv_gap(self.gap(x)))  # (N, C, 1, 1) broadcast over h, w


class SemanticBranch(nn.Module):
    """``stage1`` (a stem block, 1/4), ``stage2``.. (a stride-2 GE layer then one more, or three more for the
    last stage; each halves the size) and ``stage{n}_CEBlock`` (context embedding on the last stage).

    The stage attributes are numbered because MMSegmentation's checkpoint keys are
    (``backbone.semantic.stage3.1.conv1.conv.weight``). forward returns every stage's output, the
    context embedding's last: n + 1 maps.
    """

    def __init__(self, semantic_channels: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3,
                 exp_ratio: int = 6):
        super().__init__()
        self.stage_names: list[str] = []
        last = len(semantic_channels) - 1
        for i, channels in enumerate(semantic_channels):
            if i == 0:
                stage: nn.Module = StemBlock(in_channels, channels)
            else:
                repeats = 3 if i == last else 1
                stage = nn.Sequential(GELayer(semantic_channels[i - 1], channels, exp_ratio, stride=2),
                                      *(GELayer(channels, channels, exp_ratio) for _ in range(repeats)))
            self._add_stage(f"stage{i + 1}", stage)
        self._add_stage(f"stage{len(semantic_channels)}_CEBlock", CEBlock(semantic_channels[-1],
                                                                          semantic_channels[-1]))

    def _add_stage(self, name: str, stage: nn.Module) -> None:
        self.add_module(name, stage)
        self.stage_names.append(name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


class BGALayer(nn.Module):
    """Bilateral guided aggregation (paper fig. 6).

    The detail feature (1/8) is gated by the upsampled sigmoid of ``semantic_conv`` (3x3 + BN) on the
    semantic one; ``detail_down`` (3x3 stride 2 + BN, 3x3 avg pool stride 2) takes the detail feature to
    1/32, where the sigmoid of ``semantic_dwconv`` gates it. Upsampled and added, ``conv`` (3x3) fuses them.
    (N, C, h, w) detail, (N, C, h', w') semantic with h' = ceil(h / 4) -> (N, C, h, w).
    """

    def __init__(self, out_channels: int = 128, align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        channels = out_channels
        self.detail_dwconv = nn.Sequential(separable_conv(channels, channels, pointwise_bn=False))
        self.detail_down = nn.Sequential(conv_bn(channels, channels, stride=2, relu=False, bias=False),
                                         nn.AvgPool2d(kernel_size=3, stride=2, padding=1))
        self.semantic_conv = nn.Sequential(conv_bn(channels, channels, relu=False, bias=False))
        self.semantic_dwconv = nn.Sequential(separable_conv(channels, channels, pointwise_bn=False))
        self.conv = conv_bn(channels, channels)

    def forward(self, x_d: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        size = x_d.shape[2:]
        semantic_gate = resize(self.semantic_conv(x_s), size=size, mode="bilinear",
                               align_corners=self.align_corners)
        high = self.detail_dwconv(x_d) * torch.sigmoid(semantic_gate)  # (N, C, h, w)
        low = self.detail_down(x_d) * torch.sigmoid(self.semantic_dwconv(x_s))  # (N, C, h', w')
        low = resize(low, size=size, mode="bilinear", align_corners=self.align_corners)
        return self.conv(high + low)


class BiSeNetV2(nn.Module):
    """BiSeNetV2 backbone; outputs ``[aggregation, stage1, stage2, stage3, stage4]`` picked by ``out_indices``.

    Args:
        in_channels: input image channels.
        detail_channels: channels of the detail branch's stages (each halves the size).
        semantic_channels: channels of the semantic branch's stages (stem at 1/4, then each halves the
            size); there must be one more than detail stages, so both branches meet the aggregation layer
            at matching sizes.
        semantic_expansion_ratio: expansion of the gather-and-expansion layers.
        bga_channels: channels of the aggregation layer; must equal the last detail and semantic channels.
        out_indices: which of the outputs to return (the zoo: all five; the decode head reads the
            aggregation, the four auxiliary heads the semantic stages).
        align_corners: of the aggregation layer's bilinear resizes.
        conv_cfg, norm_cfg, act_cfg: accepted for MMSegmentation's configs but, as there, not used: the
            layers are always Conv2d + BatchNorm + ReLU (a warning says so when they ask for something else).
        init_cfg: stored, never used to download here.

    Attributes:
        out_channels: ``[bga_channels, *semantic_channels]`` at ``out_indices``.
        out_strides: ``[2 ** len(detail_channels), 4, 8, 16, ...]`` at ``out_indices``. Any input size works:
            every strided layer rounds up, so both branches reach the same ceil(H / 32) at the aggregation.
    """

    def __init__(
        self,
        in_channels: int = 3,
        detail_channels: Sequence[int] = (64, 64, 128),
        semantic_channels: Sequence[int] = (16, 32, 64, 128),
        semantic_expansion_ratio: int = 6,
        bga_channels: int = 128,
        out_indices: Sequence[int] | int = (0, 1, 2, 3, 4),
        align_corners: bool = False,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = BN,
        act_cfg: dict | None = RELU,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        if not detail_channels or len(semantic_channels) != len(detail_channels) + 1:
            raise ValueError(f"semantic_channels {tuple(semantic_channels)} needs one stage more than "
                             f"detail_channels {tuple(detail_channels)}: the detail branch ends at 1/2**len, the "
                             "aggregation takes it down 4x more to meet the semantic branch's last stage")
        if not bga_channels == detail_channels[-1] == semantic_channels[-1]:
            raise ValueError(f"bga_channels ({bga_channels}) must equal the last detail channels "
                             f"({detail_channels[-1]}) and the last semantic channels ({semantic_channels[-1]})")
        num_outs = len(semantic_channels) + 1
        out_indices = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
        if not out_indices or not all(-num_outs <= i < num_outs for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must pick among the {num_outs} outputs 0..{num_outs - 1}")
        unused = {name: cfg for name, cfg, default in (("conv_cfg", conv_cfg, None), ("norm_cfg", norm_cfg, BN),
                                                       ("act_cfg", act_cfg, RELU)) if cfg != default}
        if unused:
            log.warning("BiSeNetV2 ignores %s, as MMSegmentation does: its layers are always Conv2d, BN and ReLU",
                        ", ".join(f"{k}={v}" for k, v in unused.items()))
        self.out_indices = out_indices
        self.align_corners = align_corners
        self.init_cfg = init_cfg
        self.detail = DetailBranch(detail_channels, in_channels)
        self.semantic = SemanticBranch(semantic_channels, in_channels, semantic_expansion_ratio)
        self.bga = BGALayer(bga_channels, align_corners)

        all_channels = [bga_channels, *semantic_channels]
        all_strides = [2 ** len(detail_channels), *(4 * 2**i for i in range(len(semantic_channels)))]
        self.out_channels = [all_channels[i] for i in out_indices]
        self.out_strides = [all_strides[i] for i in out_indices]
        init_conv_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, H, W) -> the maps at ``out_indices`` of [aggregation (1/8), stem (1/4), 1/8, 1/16,
        1/32] (default channels)."""
        semantic = self.semantic(x)  # every stage, then the context embedding
        outs = [self.bga(self.detail(x), semantic[-1]), *semantic[:-1]]
        return [outs[i] for i in self.out_indices]
