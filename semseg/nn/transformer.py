"""Transformer building blocks keyed as MMSegmentation's checkpoints key them (ViT now, Swin and SETR later).

- :class:`PatchEmbed`: a strided conv turning an image into a grid of tokens (``projection``, ``norm``),
  with zero padding for sizes the patch does not divide.
- :class:`MultiheadAttention`: mmcv's wrapper around ``torch.nn.MultiheadAttention`` (the parameters sit
  under ``attn.``: ``attn.in_proj_weight``, ``attn.in_proj_bias``, ``attn.out_proj.*``) with a residual
  connection, computed with ``F.scaled_dot_product_attention``.
- :class:`FFN`: Linear-activation-dropout stacks (``layers.0.0``, ..., ``layers.{n-1}``) plus a residual.
- :class:`DropPath`: stochastic depth (per-sample residual-branch dropping; identity in eval mode).

Tokens are batch first everywhere: (B, L, C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from semseg.nn.activation import build_activation
from semseg.nn.norm import build_norm

PAD_MODES = ("corner", "same")


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def adaptive_pad(x: torch.Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int],
                 dilation: int | tuple[int, int] = 1, mode: str = "corner") -> torch.Tensor:
    """Zero-pad x (N, C, H, W) so that a window of ``kernel_size`` moved by ``stride`` covers every pixel.

    The padded size makes ``ceil(H / stride)`` windows fit. ``'corner'`` pads bottom and right only;
    ``'same'`` splits the padding between both sides (the larger half after), like TensorFlow's SAME.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {PAD_MODES}, got {mode!r}")
    pads = []
    for size, k, s, d in zip(x.shape[-2:], _pair(kernel_size), _pair(stride), _pair(dilation), strict=True):
        pads.append(max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0))
    pad_h, pad_w = pads
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "corner":
        return F.pad(x, [0, pad_w, 0, pad_h])
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class PatchEmbed(nn.Module):
    """Image to tokens: (N, C, H, W) -> ((N, h * w, embed_dims), (h, w)).

    Args:
        in_channels, embed_dims: input channels and token width.
        kernel_size, stride: the patch and its step (``stride=None``: the patch size, no overlap).
        padding: an int (or pair) is the conv's own padding; ``'corner'`` / ``'same'`` zero-pad the
            image first so that no pixel is left out (see :func:`adaptive_pad`), as MMSegmentation does.
        dilation, bias: of the projection conv.
        norm_cfg: a norm over the tokens (``norm``), or None.
    """

    def __init__(
        self,
        in_channels: int = 3,
        embed_dims: int = 768,
        kernel_size: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] | str = "corner",
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        norm_cfg: dict | None = None,
    ):
        super().__init__()
        stride = kernel_size if stride is None else stride
        self.pad_mode = padding if isinstance(padding, str) else None
        if self.pad_mode is not None and self.pad_mode not in PAD_MODES:
            raise ValueError(f"padding must be an int, a pair or one of {PAD_MODES}, got {padding!r}")
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.embed_dims = embed_dims
        self.projection = nn.Conv2d(in_channels, embed_dims, self.kernel_size, self.stride,
                                    padding=0 if self.pad_mode else _pair(padding), dilation=self.dilation,
                                    bias=bias)
        self.norm = build_norm(norm_cfg, embed_dims)[1] if norm_cfg is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.pad_mode is not None:
            x = adaptive_pad(x, self.kernel_size, self.stride, self.dilation, self.pad_mode)
        x = self.projection(x)  # (N, embed_dims, h, w)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (N, h * w, embed_dims)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero whole samples of x (B, ...) with probability ``drop_prob`` and scale the others by
    1 / (1 - drop_prob), so the expectation is unchanged; the identity when not training."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = (keep_prob + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor()
    return x / keep_prob * keep


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016) on a residual branch: see :func:`drop_path`."""

    def __init__(self, drop_prob: float = 0.1):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def _drop_path_or_identity(drop_prob: float) -> nn.Module:
    return DropPath(drop_prob) if drop_prob > 0 else nn.Identity()


class ScaledDotProductAttention(nn.Module):
    """Multi-head attention with ``torch.nn.MultiheadAttention``'s parameters (and so its checkpoint keys):
    one packed q/k/v projection ``in_proj_weight`` (3C, C) / ``in_proj_bias`` (3C) and ``out_proj``.

    ``F.scaled_dot_product_attention`` computes softmax(q k^T / sqrt(C / heads)) v; in float32 it agrees
    with the plain formula and with ``nn.MultiheadAttention`` up to rounding: about 1e-6 at unit-scale
    outputs, 1e-5 relative at ViT-B size (tests assert 1e-5 on small blocks, 1e-4 on whole models).
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0, bias: bool = True):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims, self.num_heads, self.attn_drop = embed_dims, num_heads, attn_drop
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dims, embed_dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dims)) if bias else None
        self.out_proj = nn.Linear(embed_dims, embed_dims, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, heads, L, C / heads)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Lq, C), key and value (B, Lk, C) (default: the query) -> (B, Lq, C).

        ``attn_mask``: a float mask added to the attention logits, broadcastable to (B, heads, Lq, Lk).
        """
        if key is None and value is None:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            key = query if key is None else key
            value = key if value is None else value
            weights = self.in_proj_weight.chunk(3)
            biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
            q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases, strict=True))
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=attn_mask,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class MultiheadAttention(nn.Module):
    """``identity + drop_path(proj_drop(attention(query, key, value)))``; mmcv's ``MultiheadAttention``.

    Args:
        embed_dims, num_heads: token width and number of heads.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout on the attention output.
        drop_path: stochastic-depth rate on the residual branch (MMSegmentation's ViT leaves it 0 here and
            puts it on the FFN only).
        bias: biases of the q/k/v and output projections (``qkv_bias`` in the backbones).
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 drop_path: float = 0.0, bias: bool = True):
        super().__init__()
        self.attn = ScaledDotProductAttention(embed_dims, num_heads, attn_drop, bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.drop_path = _drop_path_or_identity(drop_path)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                identity: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Lq, C) -> (B, Lq, C); ``identity`` (default: the query) is the residual."""
        out = self.attn(query, key, value, attn_mask)
        return (query if identity is None else identity) + self.drop_path(self.proj_drop(out))


class FFN(nn.Module):
    """Feed-forward network with a residual: ``identity + drop_path(layers(x))``; mmcv's ``FFN``.

    ``layers`` holds ``num_fcs - 1`` (Linear, activation, Dropout) groups, then the last Linear back to
    ``embed_dims`` and a Dropout: keys ``layers.0.0.*``, ..., ``layers.{num_fcs - 1}.*``.

    Args:
        embed_dims, feedforward_channels: token width and hidden width.
        num_fcs: number of Linear layers (>= 2).
        act_cfg: activation after each hidden Linear (mmcv's default: ReLU).
        ffn_drop: dropout after each activation and after the last Linear.
        drop_path: stochastic-depth rate on the residual branch.
        add_identity: add the residual (otherwise return the branch alone).
    """

    def __init__(self, embed_dims: int = 256, feedforward_channels: int = 1024, num_fcs: int = 2,
                 act_cfg: dict = dict(type="ReLU", inplace=True),  # noqa: B006 - never mutated
                 ffn_drop: float = 0.0, drop_path: float = 0.0, add_identity: bool = True):
        super().__init__()
        if num_fcs < 2:
            raise ValueError(f"num_fcs must be at least 2, got {num_fcs}")
        hidden = []
        in_channels = embed_dims
        for _ in range(num_fcs - 1):
            hidden.append(nn.Sequential(nn.Linear(in_channels, feedforward_channels), build_activation(act_cfg),
                                        nn.Dropout(ffn_drop)))
            in_channels = feedforward_channels
        self.layers = nn.Sequential(*hidden, nn.Linear(feedforward_channels, embed_dims), nn.Dropout(ffn_drop))
        self.drop_path = _drop_path_or_identity(drop_path)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, C) -> (B, L, C); ``identity`` (default: x) is the residual."""
        out = self.drop_path(self.layers(x))
        if not self.add_identity:
            return out
        return (x if identity is None else identity) + out
