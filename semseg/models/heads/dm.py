"""DMHead: dynamic convolutional modules with several filter sizes (DMNet, He et al. ICCV 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn.activation import build_activation
from semseg.nn.conv_module import ConvModule
from semseg.nn.norm import build_norm


def dynamic_depthwise_conv(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Convolve every sample with its own depthwise filters, keeping the spatial size.

    x (N, C, h, w), filters (N, C, k, k) -> (N, C, h, w). The batch is folded into the channels so that one
    grouped convolution (N * C groups) does the work. An even ``k`` pads one more row/column at the top/left
    than at the bottom/right (MMSegmentation's choice, which its checkpoints were trained with).
    """
    n, c, h, w = x.shape
    k = filters.shape[-1]
    before, after = k // 2, (k - 1) // 2
    x = F.pad(x.reshape(1, n * c, h, w), (before, after, before, after))
    out = F.conv2d(x, filters.reshape(n * c, 1, k, k), groups=n * c)
    return out.reshape(n, c, h, w)


class DynamicConvModule(nn.Module):
    """DMNet's DCM (paper sec. 3.2): a ``k x k`` depthwise filter per sample and channel, generated from the
    input average-pooled to ``k x k``, applied to the reduced input; then norm, activation and an optional
    1x1 ``fusion_conv``.

    Input (N, in_channels, h, w) -> output (N, channels, h, w). The norm is the child ``norm`` whatever its
    type (MMSegmentation's key name).
    """

    def __init__(self, filter_size: int, fusion: bool, in_channels: int, channels: int, conv_cfg: dict | None,
                 norm_cfg: dict | None, act_cfg: dict | None):
        super().__init__()
        self.filter_size = filter_size
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.filter_gen_conv = nn.Conv2d(in_channels, channels, 1)
        self.input_redu_conv = ConvModule(in_channels, channels, 1, **cfgs)
        self.norm = None if norm_cfg is None else build_norm(norm_cfg, channels)[1]
        self.activate = build_activation(act_cfg)
        self.fusion_conv = ConvModule(channels, channels, 1, **cfgs) if fusion else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        filters = self.filter_gen_conv(F.adaptive_avg_pool2d(x, self.filter_size))  # (N, C, k, k)
        out = dynamic_depthwise_conv(self.input_redu_conv(x), filters)  # (N, C, h, w)
        if self.norm is not None:
            out = self.norm(out)
        if self.activate is not None:
            out = self.activate(out)
        return out if self.fusion_conv is None else self.fusion_conv(out)


class DMHead(BaseDecodeHead):
    """One dynamic convolutional module per filter size; a 3x3 ``bottleneck`` over ``[input, dcm outputs...]``.

    Args:
        filter_sizes: sizes ``k`` of the generated ``k x k`` filters, one module each.
        fusion: add a 1x1 ``fusion_conv`` at the end of every module.
        **kwargs: :class:`BaseDecodeHead` arguments.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, filter_sizes: Sequence[int] = (1, 3, 5, 7), fusion: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filter_sizes, (list, tuple)):
            raise TypeError(f"filter_sizes must be a list or tuple, got {filter_sizes!r}")
        if not all(isinstance(k, int) and k >= 1 for k in filter_sizes):
            raise ValueError(f"filter_sizes must hold positive ints, got {filter_sizes!r}")
        self.filter_sizes = filter_sizes
        self.fusion = fusion
        self.dcm_modules = nn.ModuleList(
            DynamicConvModule(k, fusion, self.in_channels, self.channels, self.conv_cfg, self.norm_cfg,
                              self.act_cfg)
            for k in filter_sizes
        )
        self.bottleneck = self.conv_block(self.in_channels + len(filter_sizes) * self.channels, self.channels, 3,
                                          padding=1)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        return self.bottleneck(torch.cat([x, *(dcm(x) for dcm in self.dcm_modules)], dim=1))
