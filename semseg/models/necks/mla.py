"""MLANeck: SETR's multi-level feature aggregation, top-down over same-sized ViT maps (arXiv:2012.15840)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.nn.conv_module import ConvModule
from semseg.nn.layer_norm_2d import build_layer_norm_2d

DEFAULT_NORM_LAYER = dict(type="LN", eps=1e-6, requires_grad=True)


class MLAModule(nn.Module):
    """1x1 ``channel_proj`` per input, a running sum from the deepest input down, a 3x3 ``feat_extract`` each.

    Output k is ``feat_extract[k]`` of the sum of the projections of the last k + 1 inputs: the first output
    sees only the deepest input, the last one all of them.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, norm_cfg: dict | None = None,
                 act_cfg: dict | None = None):
        super().__init__()
        cfgs = dict(norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.channel_proj = nn.ModuleList(ConvModule(c, out_channels, 1, **cfgs) for c in in_channels)
        self.feat_extract = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, **cfgs) for _ in in_channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        projected = [proj(x) for proj, x in zip(self.channel_proj, inputs, strict=True)]
        outs, running = [], None
        for conv, feat in zip(self.feat_extract, reversed(projected), strict=True):
            running = feat if running is None else running + feat
            outs.append(conv(running))
        return outs


class MLANeck(nn.Module):
    """A LayerNorm over each pixel of each input (``norm.i``), then :class:`MLAModule` (``mla``).

    Args:
        in_channels: channels of each input (ViT-L: four 1024-channel maps).
        out_channels: channels of every output.
        norm_layer: the LayerNorm config of the inputs.
        norm_cfg, act_cfg: of the conv blocks (none by default).

    Input: ``len(in_channels)`` maps (N, in_channels[i], h, w) of one size. Output: as many maps
    (N, out_channels, h, w), ordered from the deepest-only sum to the sum of all.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, norm_layer: dict = DEFAULT_NORM_LAYER,
                 norm_cfg: dict | None = None, act_cfg: dict | None = None):
        super().__init__()
        if not isinstance(in_channels, (list, tuple)):
            raise TypeError(f"MLANeck: in_channels must be a list, got {in_channels!r}")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.norm = nn.ModuleList(build_layer_norm_2d(norm_layer, c) for c in in_channels)
        self.mla = MLAModule(in_channels, out_channels, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"MLANeck expects {len(self.in_channels)} inputs, got {len(inputs)}")
        return self.mla([norm(x) for norm, x in zip(self.norm, inputs, strict=True)])
