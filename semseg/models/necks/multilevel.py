"""MultiLevelNeck: single-scale ViT features -> a pyramid, for heads that expect one (UPerHead)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.nn.conv_module import ConvModule
from semseg.nn.resize import resize


class MultiLevelNeck(nn.Module):
    """A 1x1 ``lateral_convs`` block per input, then per output scale a bilinear resize by ``scales[i]`` and a
    3x3 block (``convs``). One input feeds every scale; otherwise there is one input per scale.

    Args:
        in_channels: channels of each input level.
        out_channels: channels of every output level.
        scales: resize factor of each output (ViT configs: [4, 2, 1, 0.5], a stride-16 map -> strides 4..32).
        norm_cfg, act_cfg: of every conv block (none by default).

    Input: maps (N, in_channels[i], h, w). Output: ``len(scales)`` maps (N, out_channels, h * s, w * s)
    (sizes floored).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        scales: Sequence[float] = (0.5, 1, 2, 4),
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
    ):
        super().__init__()
        if not isinstance(in_channels, (list, tuple)):
            raise TypeError(f"MultiLevelNeck: in_channels must be a list, got {in_channels!r}")
        if len(in_channels) not in (1, len(scales)):
            raise ValueError(f"MultiLevelNeck: {len(in_channels)} inputs for {len(scales)} scales; give one "
                             "input or one per scale")
        self.in_channels, self.scales = list(in_channels), list(scales)
        self.out_channels = out_channels
        cfgs = dict(norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, **cfgs) for c in in_channels)
        self.convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1, **cfgs) for _ in scales)
        for m in self.modules():  # MMSegmentation's init: Xavier-uniform convs, zero biases
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"MultiLevelNeck expects {len(self.in_channels)} inputs, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        if len(laterals) == 1:
            laterals = laterals * len(self.scales)
        return [conv(resize(x, scale_factor=scale, mode="bilinear"))
                for conv, x, scale in zip(self.convs, laterals, self.scales, strict=True)]
