"""ANNHead: asymmetric non-local blocks with pyramid-pooled keys (ANN, arXiv:1908.07678)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn.conv_module import ConvModule
from semseg.nn.self_attention import SelfAttentionBlock


class PyramidPoolConcat(nn.Module):
    """Average-pool a map to each ``s x s`` of ``pool_scales`` and list all the cells as positions.

    (N, C, h, w) -> (N, C, sum(s * s)): the few keys and values ANN attends over (paper sec. 3.2).
    """

    def __init__(self, pool_scales: Sequence[int]):
        super().__init__()
        self.pool_scales = tuple(pool_scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in self.pool_scales], dim=2)


def ann_attention(
    key_in_channels: int,
    query_in_channels: int,
    channels: int,
    out_channels: int,
    share_key_query: bool,
    key_pool_scales: Sequence[int],
    conv_cfg: dict | None,
    norm_cfg: dict | None,
    act_cfg: dict | None,
) -> SelfAttentionBlock:
    """ANN's attention: conv-norm-act key/query projections, plain-conv value/out projections, scaled
    similarities, keys and values pooled by :class:`PyramidPoolConcat`."""
    return SelfAttentionBlock(
        key_in_channels, query_in_channels, channels, out_channels, share_key_query=share_key_query,
        key_downsample=PyramidPoolConcat(key_pool_scales), key_query_norm=True, value_out_norm=False,
        matmul_norm=True, with_out=True, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
    )


class AFNB(nn.Module):
    """Asymmetric fusion non-local block: high-level queries attend over pooled low-level keys.

    The stages' contexts are summed, concatenated with the high-level input and fused by a 1x1
    conv-norm ``bottleneck`` (no activation).
    Input: low (N, low_in_channels, h, w), high (N, high_in_channels, h, w); output (N, out_channels, h, w).
    """

    def __init__(self, low_in_channels: int, high_in_channels: int, channels: int, out_channels: int,
                 num_stages: int, key_pool_scales: Sequence[int], conv_cfg: dict | None,
                 norm_cfg: dict | None, act_cfg: dict | None):
        super().__init__()
        self.stages = nn.ModuleList(
            ann_attention(low_in_channels, high_in_channels, channels, out_channels, False, key_pool_scales,
                          conv_cfg, norm_cfg, act_cfg)
            for _ in range(num_stages)
        )
        self.bottleneck = ConvModule(out_channels + high_in_channels, out_channels, 1, conv_cfg=conv_cfg,
                                     norm_cfg=norm_cfg, act_cfg=None)

    def forward(self, low_feats: torch.Tensor, high_feats: torch.Tensor) -> torch.Tensor:
        context = sum(stage(high_feats, low_feats) for stage in self.stages)
        return self.bottleneck(torch.cat([context, high_feats], dim=1))


class APNB(nn.Module):
    """Asymmetric pyramid non-local block: self-attention with one shared key/query projection.

    The stages' contexts are summed, concatenated with the input and fused by a 1x1 conv-norm-act
    ``bottleneck``. Input (N, in_channels, h, w); output (N, out_channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, num_stages: int,
                 key_pool_scales: Sequence[int], conv_cfg: dict | None, norm_cfg: dict | None,
                 act_cfg: dict | None):
        super().__init__()
        self.stages = nn.ModuleList(
            ann_attention(in_channels, in_channels, channels, out_channels, True, key_pool_scales, conv_cfg,
                          norm_cfg, act_cfg)
            for _ in range(num_stages)
        )
        self.bottleneck = ConvModule(2 * in_channels, out_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                     act_cfg=act_cfg)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        context = sum(stage(feats, feats) for stage in self.stages)
        return self.bottleneck(torch.cat([context, feats], dim=1))


class ANNHead(BaseDecodeHead):
    """``fusion`` (AFNB) of the two selected inputs, dropout, a 3x3 ``bottleneck``, then ``context`` (APNB).

    Args:
        project_channels: channels of the attention's keys, queries and values.
        query_scales: one attention stage per entry in AFNB and in APNB. Only 1 is supported: MMSegmentation
            max-pools the queries by the scale but then fails to fuse the smaller context with its input.
        key_pool_scales: pyramid pooling sizes that give the keys and values.
        **kwargs: :class:`BaseDecodeHead` arguments; ``in_channels`` and ``in_index`` are pairs
            (low level, high level), ``input_transform`` is always ``'multiple_select'``.

    Input: the backbone's list of features; the selected two are (N, C_low, h, w) and (N, C_high, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(
        self,
        project_channels: int,
        query_scales: Sequence[int] = (1,),
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
        **kwargs,
    ):
        if any(scale != 1 for scale in query_scales):
            raise ValueError(f"ANNHead supports query_scales of 1 only, got {tuple(query_scales)} "
                             "(MMSegmentation 1.2.2 fails on a downsampled query as well)")
        super().__init__(input_transform="multiple_select", **kwargs)
        if len(self.in_channels) != 2:
            raise ValueError(f"ANNHead needs two inputs (low, high level), got in_channels={self.in_channels}")
        low_in_channels, high_in_channels = self.in_channels
        self.project_channels = project_channels
        self.query_scales = tuple(query_scales)
        self.key_pool_scales = tuple(key_pool_scales)
        cfgs = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.fusion = AFNB(low_in_channels, high_in_channels, project_channels, high_in_channels,
                           len(query_scales), key_pool_scales, **cfgs)
        self.bottleneck = self.conv_block(high_in_channels, self.channels, 3, padding=1)
        self.context = APNB(self.channels, project_channels, self.channels, len(query_scales), key_pool_scales,
                            **cfgs)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected inputs (low, high level) -> (N, channels, h, w)."""
        low_feats, high_feats = self.transform_inputs(inputs)
        x = self.fusion(low_feats, high_feats)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.context(self.bottleneck(x))
