"""Key-query-value attention over feature-map positions (non-local / transformer attention, arXiv:1706.03762).

One block serves several heads: ANN (pooled keys, arXiv:1908.07678), DANet's position attention
(arXiv:1809.02983) and OCRNet's object attention (arXiv:1909.11065). Its children are named as in
MMSegmentation's ``SelfAttentionBlock`` (``key_project``, ``query_project``, ``value_project``,
``out_project``) so checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.nn.conv_module import ConvModule


def build_project(
    in_channels: int,
    channels: int,
    num_convs: int,
    use_conv_module: bool,
    conv_cfg: dict | None = None,
    norm_cfg: dict | None = None,
    act_cfg: dict | None = None,
) -> nn.Module:
    """``num_convs`` 1x1 projections, in_channels -> channels -> ... -> channels.

    Each is a :class:`ConvModule` (conv, norm, activation from the cfgs) when ``use_conv_module``, a plain
    ``nn.Conv2d`` with bias otherwise. One projection is returned as the layer itself (keys
    ``<name>.conv.weight`` / ``<name>.weight``), several as an ``nn.Sequential`` (``<name>.0.conv.weight``).
    """
    if num_convs < 1:
        raise ValueError(f"a projection needs at least one conv, got num_convs={num_convs}")

    def layer(in_ch: int) -> nn.Module:
        if use_conv_module:
            return ConvModule(in_ch, channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        return nn.Conv2d(in_ch, channels, 1)

    layers = [layer(in_channels)] + [layer(channels) for _ in range(num_convs - 1)]
    return layers[0] if num_convs == 1 else nn.Sequential(*layers)


class SelfAttentionBlock(nn.Module):
    """Every query position attends over the key positions and gathers their values.

    ``query = query_project(query_feats)``, ``key = key_project(key_feats)``, ``value =
    value_project(key_feats)``; ``query_downsample`` then shrinks the query map and ``key_downsample``
    the key and value maps (it may return (N, C, L) position lists, as ANN's pyramid pooling does).
    Attention is ``softmax(query^T key * scale)`` over the key positions, with ``scale = channels**-0.5``
    when ``matmul_norm`` (else 1); the gathered values are shaped back to the (downsampled) query map and
    go through ``out_project`` when ``with_out``.

    Args:
        key_in_channels: channels of ``key_feats`` (which also give the values).
        query_in_channels: channels of ``query_feats``.
        channels: channels of the projected keys and queries (and of the values when ``with_out``).
        out_channels: channels of the output.
        share_key_query: one projection for keys and queries (``query_project`` is ``key_project``;
            both key sets appear in the state dict). Needs equal input channels.
        query_downsample: optional module applied to the projected queries.
        key_downsample: optional module applied to the projected keys and values.
        key_query_num_convs: 1x1 convs in the key and query projections.
        value_out_num_convs: 1x1 convs in the value and out projections.
        key_query_norm: key/query projections are :class:`ConvModule` s (else plain convs).
        value_out_norm: value/out projections are :class:`ConvModule` s (else plain convs).
        matmul_norm: scale the similarities by ``channels**-0.5``.
        with_out: project the gathered values (``channels``) to ``out_channels`` with ``out_project``;
            without it the values are projected to ``out_channels`` directly.
        conv_cfg, norm_cfg, act_cfg: of the :class:`ConvModule` projections.

    Input: query_feats (N, query_in_channels, H, W), key_feats (N, key_in_channels, h, w).
    Output: (N, out_channels, H', W'), with (H', W') the query map's size after ``query_downsample``.
    """

    def __init__(
        self,
        key_in_channels: int,
        query_in_channels: int,
        channels: int,
        out_channels: int,
        *,
        share_key_query: bool = False,
        query_downsample: nn.Module | None = None,
        key_downsample: nn.Module | None = None,
        key_query_num_convs: int = 1,
        value_out_num_convs: int = 1,
        key_query_norm: bool = False,
        value_out_norm: bool = False,
        matmul_norm: bool = False,
        with_out: bool = True,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
    ):
        super().__init__()
        if share_key_query and key_in_channels != query_in_channels:
            raise ValueError(f"share_key_query needs key_in_channels ({key_in_channels}) == "
                             f"query_in_channels ({query_in_channels})")
        self.key_in_channels = key_in_channels
        self.query_in_channels = query_in_channels
        self.channels = channels
        self.out_channels = out_channels
        self.share_key_query = share_key_query
        self.matmul_norm = matmul_norm
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)

        self.key_project = build_project(key_in_channels, channels, key_query_num_convs, key_query_norm, **cfgs)
        if share_key_query:
            self.query_project = self.key_project
        else:
            self.query_project = build_project(query_in_channels, channels, key_query_num_convs, key_query_norm,
                                               **cfgs)
        value_channels = channels if with_out else out_channels
        self.value_project = build_project(key_in_channels, value_channels, value_out_num_convs, value_out_norm,
                                           **cfgs)
        self.out_project = (build_project(channels, out_channels, value_out_num_convs, value_out_norm, **cfgs)
                            if with_out else None)
        self.query_downsample = query_downsample
        self.key_downsample = key_downsample

        # A single plain-conv out projection starts at zero, so the block first adds nothing (as in
        # MMSegmentation; a Sequential or ConvModule keeps its usual init there too).
        if isinstance(self.out_project, nn.Conv2d):
            nn.init.zeros_(self.out_project.weight)
            nn.init.zeros_(self.out_project.bias)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        """query_feats (N, Cq, H, W), key_feats (N, Ck, h, w) -> (N, out_channels, H', W')."""
        query = self.query_project(query_feats)
        if self.query_downsample is not None:
            query = self.query_downsample(query)
        key = self.key_project(key_feats)
        value = self.value_project(key_feats)
        if self.key_downsample is not None:
            key = self.key_downsample(key)
            value = self.key_downsample(value)

        n, _, *query_size = query.shape
        scale = self.channels**-0.5 if self.matmul_norm else 1.0
        context = F.scaled_dot_product_attention(
            query.flatten(2).transpose(1, 2),  # (N, Lq, channels)
            key.flatten(2).transpose(1, 2),  # (N, Lk, channels)
            value.flatten(2).transpose(1, 2),  # (N, Lk, Cv)
            scale=scale,
        )  # (N, Lq, Cv)
        # contiguous: a transposed layout would make the convs after the block round differently
        context = context.transpose(1, 2).reshape(n, -1, *query_size).contiguous()
        if self.out_project is not None:
            context = self.out_project(context)
        return context
