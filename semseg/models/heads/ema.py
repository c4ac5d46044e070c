"""EMAHead: expectation-maximization attention (EMANet, arXiv:1907.13426).

A small set of bases (``num_bases`` unit vectors of ``ema_channels``) is refined per image by a few E/M
steps; each pixel is rebuilt from the bases by its attention weights. The bases kept between images are a
running average, updated in training from the batch (and across processes) like BatchNorm statistics.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead


def em_step(feats: torch.Tensor, bases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One E/M iteration. feats (N, C, L), bases (N, C, K) -> (new bases (N, C, K), attention (N, L, K)).

    E step: each pixel's softmax over the bases of their dot products. M step: each basis becomes the
    attention-weighted mean of the pixels (weights normalized to sum 1 over pixels), then unit L2 norm
    over channels.
    """
    attention = torch.softmax(torch.bmm(feats.transpose(1, 2), bases), dim=2)  # (N, L, K)
    weights = attention / attention.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return F.normalize(torch.bmm(feats, weights), dim=1), attention


class EMAModule(nn.Module):
    """EM attention over a feature map, with running bases in the buffer ``bases`` (1, channels, num_bases).

    The EM result carries no gradient (as in EMANet): the head trains through its identity path.
    In training mode, each forward moves ``bases`` towards the batch's refined bases (averaged over the
    batch and over all processes of an initialized ``torch.distributed`` group, then L2-normalized):
    ``bases = (1 - momentum) * bases + momentum * new``.
    """

    def __init__(self, channels: int, num_bases: int, num_stages: int, momentum: float):
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be at least 1, got {num_stages}")
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.momentum = momentum
        bases = torch.randn(1, channels, num_bases) * math.sqrt(2.0 / num_bases)
        self.register_buffer("bases", F.normalize(bases, dim=1))

    @torch.no_grad()
    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, C, H, W) -> reconstruction (N, C, H, W), without gradient."""
        n, c, h, w = feats.shape
        x = feats.flatten(2)  # (N, C, H*W)
        bases = self.bases.expand(n, -1, -1)
        for _ in range(self.num_stages):
            bases, attention = em_step(x, bases)
        if self.training:
            self._update_bases(bases)
        return torch.bmm(bases, attention.transpose(1, 2)).view(n, c, h, w)

    def _update_bases(self, bases: torch.Tensor) -> None:
        """Momentum update of the running bases from the refined ones (N, C, K)."""
        new = bases.mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized():
            new = new / dist.get_world_size()
            dist.all_reduce(new)
        self.bases.lerp_(F.normalize(new, dim=1).to(self.bases.dtype), self.momentum)


class EMAHead(BaseDecodeHead):
    """3x3 conv to ``ema_channels``, EM attention as a residual, 3x3 ``bottleneck``, optional ``conv_cat``.

    Args:
        ema_channels: channels of the EM attention.
        num_bases: number of bases.
        num_stages: number of E/M iterations (at least 1).
        concat_input: fuse the input with the features by a 3x3 ``conv_cat`` before classifying.
        momentum: weight of the new bases in the training-time update of the running bases.
        **kwargs: :class:`BaseDecodeHead` arguments.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w) logits, in training and in eval mode.
    """

    def __init__(self, ema_channels: int, num_bases: int, num_stages: int, concat_input: bool = True,
                 momentum: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.ema_channels = ema_channels
        self.concat_input = concat_input
        self.ema_module = EMAModule(ema_channels, num_bases, num_stages, momentum)
        self.ema_in_conv = self.conv_block(self.in_channels, ema_channels, 3, padding=1)
        # A frozen 1x1 conv (with bias, no norm or activation) maps the ReLU output to (-inf, inf).
        self.ema_mid_conv = self.conv_block(ema_channels, ema_channels, 1, norm_cfg=None, act_cfg=None)
        self.ema_mid_conv.requires_grad_(False)
        self.ema_out_conv = self.conv_block(ema_channels, ema_channels, 1, act_cfg=None)
        self.bottleneck = self.conv_block(ema_channels, self.channels, 3, padding=1)
        if concat_input:
            self.conv_cat = self.conv_block(self.in_channels + self.channels, self.channels, 3, padding=1)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w); updates the bases in training."""
        x = self.transform_inputs(inputs)
        identity = self.ema_in_conv(x)  # (N, ema_channels, h, w)
        with torch.no_grad():  # nothing upstream of the EM output gets a gradient from it
            recon = self.ema_module(self.ema_mid_conv(identity))
        out = F.relu(identity + self.ema_out_conv(F.relu(recon)), inplace=True)
        out = self.bottleneck(out)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out
