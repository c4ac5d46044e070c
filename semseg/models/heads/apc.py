"""APCHead: adaptive context modules at several pooling scales (APCNet, He et al. CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn.conv_module import ConvModule


class AdaptiveContextModule(nn.Module):
    """APCNet's ACM (paper sec. 3.2): each position mixes the ``s x s`` pooled region features with sigmoid
    weights predicted from its own (reduced) feature plus the reduced image's global context.

    Input (N, in_channels, h, w) -> output (N, channels, h, w). The activation after the residual sum is a
    plain ReLU whatever ``act_cfg`` says, as in MMSegmentation.
    """

    def __init__(self, pool_scale: int, fusion: bool, in_channels: int, channels: int, conv_cfg: dict | None,
                 norm_cfg: dict | None, act_cfg: dict | None):
        super().__init__()
        self.pool_scale = pool_scale
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.pooled_redu_conv = ConvModule(in_channels, channels, 1, **cfgs)
        self.input_redu_conv = ConvModule(in_channels, channels, 1, **cfgs)
        self.global_info = ConvModule(channels, channels, 1, **cfgs)
        self.gla = nn.Conv2d(channels, pool_scale**2, 1)  # "global-guided local affinity"
        self.residual_conv = ConvModule(channels, channels, 1, **cfgs)
        self.fusion_conv = ConvModule(channels, channels, 1, **cfgs) if fusion else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        regions = self.pooled_redu_conv(F.adaptive_avg_pool2d(x, self.pool_scale)).flatten(2)  # (N, C, s*s)
        x = self.input_redu_conv(x)  # (N, C, h, w)
        context = self.global_info(F.adaptive_avg_pool2d(x, 1))  # (N, C, 1, 1), broadcast over positions
        affinity = torch.sigmoid(self.gla(x + context))  # (N, s*s, h, w)
        out = torch.einsum("nck,nkhw->nchw", regions, affinity)  # (N, C, h, w)
        out = torch.relu(self.residual_conv(out) + x)
        return out if self.fusion_conv is None else self.fusion_conv(out)


class APCHead(BaseDecodeHead):
    """One adaptive context module per pooling scale; a 3x3 ``bottleneck`` over ``[input, acm outputs...]``.

    Args:
        pool_scales: region grid sizes ``s`` of the modules (``s x s`` pooled regions each).
        fusion: add a 1x1 ``fusion_conv`` at the end of every module.
        **kwargs: :class:`BaseDecodeHead` arguments.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, pool_scales: Sequence[int] = (1, 2, 3, 6), fusion: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_scales, (list, tuple)):
            raise TypeError(f"pool_scales must be a list or tuple, got {pool_scales!r}")
        if not all(isinstance(s, int) and s >= 1 for s in pool_scales):
            raise ValueError(f"pool_scales must hold positive ints, got {pool_scales!r}")
        self.pool_scales = pool_scales
        self.fusion = fusion
        self.acm_modules = nn.ModuleList(
            AdaptiveContextModule(s, fusion, self.in_channels, self.channels, self.conv_cfg, self.norm_cfg,
                                  self.act_cfg)
            for s in pool_scales
        )
        self.bottleneck = self.conv_block(self.in_channels + len(pool_scales) * self.channels, self.channels, 3,
                                          padding=1)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        return self.bottleneck(torch.cat([x, *(acm(x) for acm in self.acm_modules)], dim=1))
