"""Criss-cross attention (CCNet, Huang et al., arXiv:1811.11721, sec. 3.2), in plain torch.

Each position attends to the positions in its own column and its own row (H + W - 1 of them: the centre
belongs to both, so its column term is masked out and it is counted once), with one softmax over both.
Parameter names follow mmcv's ``CrissCrossAttention`` (``query_conv``, ``key_conv``, ``value_conv``,
``gamma.scale``) so checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.nn.scale import Scale


class CrissCrossAttention(nn.Module):
    """``x + gamma * attention(x)`` over each position's row and column.

    Args:
        in_channels: channels C of the input; queries and keys have C // 8 channels.

    Input (N, C, H, W); output (N, C, H, W). ``gamma`` starts at 0, so a fresh block is the identity.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        query, key, value = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        # Scores of (y, x) against (k, x) in its column and against (y, k) in its row: (N, H, W, H | W).
        column = torch.einsum("ncyx,nckx->nyxk", query, key)
        centre = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # (H, 1, H): k == y
        column = column.masked_fill(centre, float("-inf"))
        row = torch.einsum("ncyx,ncyk->nyxk", query, key)
        weights = torch.softmax(torch.cat([column, row], dim=-1), dim=-1)
        column, row = weights.split([h, x.shape[3]], dim=-1)
        out = torch.einsum("nckx,nyxk->ncyx", value, column) + torch.einsum("ncyk,nyxk->ncyx", value, row)
        return self.gamma(out) + x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"
