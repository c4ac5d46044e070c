"""``LayerNorm2d``: a LayerNorm over the channels of each pixel of an NCHW map (SETR's decoders and neck)."""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm of each pixel's channel vector, as if the map were a sequence of tokens:
    (N, C, H, W) -> (N, C, H, W). Its parameters are a LayerNorm's (``weight``, ``bias``: (C,))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def build_layer_norm_2d(norm_cfg: dict, channels: int) -> LayerNorm2d:
    """A :class:`LayerNorm2d` from a ``dict(type='LN', eps=..., requires_grad=...)`` config; other norm types
    raise (the layer normalizes each pixel like a token)."""
    cfg = dict(norm_cfg)
    norm_type = cfg.pop("type", None)
    if norm_type != "LN":
        raise ValueError(f"this norm works on each pixel's channels and must be of type 'LN', got {norm_type!r}")
    requires_grad = cfg.pop("requires_grad", True)
    norm = LayerNorm2d(channels, **cfg)
    for param in norm.parameters():
        param.requires_grad = requires_grad
    return norm
