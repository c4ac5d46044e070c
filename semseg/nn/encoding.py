"""The encoding layer of EncNet (Zhang et al., CVPR 2018, arXiv:1803.08904, sec. 3.1).

Each of the H*W input features x_i is softly assigned to ``num_codes`` learnt codewords c_k, with weights
a_ik = softmax_k(s_k * ||x_i - c_k||^2) (``scale`` s_k is learnt, initialised negative), and the residuals
are aggregated per codeword: e_k = sum_i a_ik (x_i - c_k).
"""

from __future__ import annotations

import torch
from torch import nn


class Encoding(nn.Module):
    """Learnable residual encoder: (N, channels, H, W) -> (N, num_codes, channels).

    Attribute names ``codewords`` (num_codes, channels) and ``scale`` (num_codes,) are MMSegmentation's
    checkpoint keys. Distances and aggregation are matrix products, so no (N, H*W, num_codes, channels)
    tensor is ever built.
    """

    def __init__(self, channels: int, num_codes: int):
        super().__init__()
        if channels < 1 or num_codes < 1:
            raise ValueError(f"channels and num_codes must be positive, got {channels} and {num_codes}")
        self.channels, self.num_codes = channels, num_codes
        std = 1.0 / (num_codes * channels) ** 0.5
        self.codewords = nn.Parameter(torch.empty(num_codes, channels).uniform_(-std, std))
        self.scale = nn.Parameter(torch.empty(num_codes).uniform_(-1, 0))

    def scaled_l2(self, x: torch.Tensor) -> torch.Tensor:
        """s_k * ||x_i - c_k||^2: x (N, L, channels) -> (N, L, num_codes)."""
        squared = x.pow(2).sum(-1, keepdim=True) - 2 * x @ self.codewords.t() + self.codewords.pow(2).sum(-1)
        return squared * self.scale

    def aggregate(self, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """sum_i a_ik (x_i - c_k): weights (N, L, num_codes), x (N, L, channels) -> (N, num_codes, channels)."""
        return weights.transpose(1, 2) @ x - weights.sum(1).unsqueeze(-1) * self.codewords

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, channels, H, W) -> encoded features (N, num_codes, channels)."""
        if x.dim() != 4 or x.size(1) != self.channels:
            raise ValueError(f"Encoding expects (N, {self.channels}, H, W), got {tuple(x.shape)}")
        x = x.flatten(2).transpose(1, 2)  # (N, H*W, channels)
        return self.aggregate(self.scaled_l2(x).softmax(dim=2), x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_codes={self.num_codes}"
