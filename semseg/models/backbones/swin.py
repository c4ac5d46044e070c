"""Swin Transformer backbone (Liu et al., ICCV 2021) with MMSegmentation's parameter names.

A 4x4 patch embedding (``patch_embed``) makes tokens; each stage (``stages.i``) runs ``depths[i]`` blocks of
self-attention inside non-overlapping ``window_size`` windows (every second block shifts the windows by half a
window, with a mask so that tokens only attend within their own region of the rolled map), then a patch merging
(``downsample``) halves the grid and doubles the width. Attention logits carry a learned bias per relative
position inside a window (``relative_position_bias_table``). Stage outputs of ``out_indices`` are normed
(``norm{i}``) and returned as (N, embed_dims * 2**i, H / stride, W / stride) maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from semseg.models.backbones.base import FreezableBackbone, check_pretrained
from semseg.nn.norm import build_norm
from semseg.nn.transformer import FFN, DropPath, PatchEmbed, adaptive_pad

SHIFT_MASK_VALUE = -100.0  # MMSegmentation's (and the original Swin's) logit for a token of another region


def _token_norm(norm_cfg: dict, channels: int) -> nn.Module:
    """The norm of ``norm_cfg`` over (B, L, C) tokens: only LayerNorm fits there."""
    name, layer = build_norm(norm_cfg, channels)
    if name != "ln":
        raise ValueError(f"Swin's norm_cfg must be of type 'LN', got {norm_cfg.get('type')!r}")
    return layer


def relative_position_index(window_size: tuple[int, int]) -> torch.Tensor:
    """(Wh*Ww, Wh*Ww) long: the row of the bias table for each (query, key) pair of a window.

    The offset (dy, dx) = query - key position lies in [-(Wh-1), Wh-1] x [-(Ww-1), Ww-1] and maps to the row
    (dy + Wh - 1) * (2 * Ww - 1) + (dx + Ww - 1).
    """
    wh, ww = window_size
    rows, cols = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = rows[:, None] - rows[None, :] + wh - 1
    dx = cols[:, None] - cols[None, :] + ww - 1
    return dy * (2 * ww - 1) + dx


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H/ws * W/ws, ws*ws, C), windows in row-major order; H and W divisible by ws."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, window_size * window_size, c)


def window_reverse(windows: torch.Tensor, hw: tuple[int, int], window_size: int) -> torch.Tensor:
    """The inverse of :func:`window_partition`: (B, nW, ws*ws, C) -> (B, H, W, C)."""
    b, _, _, c = windows.shape
    h, w = hw
    x = windows.reshape(b, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shifted_window_mask(hw: tuple[int, int], window_size: int, shift_size: int,
                        device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask for windows of a map (H, W) rolled up-left by ``shift_size``.

    Rolling brings the last ``shift_size`` rows/columns next to the first ones; along each axis the rolled map
    has three regions (before the last window, the last window's first part, the wrapped-around part). Two
    tokens of one window attend to each other (0) only when they come from the same region along both axes,
    otherwise the logit gets ``SHIFT_MASK_VALUE``.
    """
    def regions(size: int) -> torch.Tensor:
        idx = torch.arange(size, device=device)
        return (idx >= size - window_size).long() + (idx >= size - shift_size).long()

    h, w = hw
    label = regions(h)[:, None] * 3 + regions(w)[None, :]  # (H, W) region id
    label = window_partition(label[None, :, :, None], window_size)[0, :, :, 0]  # (nW, ws*ws)
    differs = label[:, :, None] != label[:, None, :]
    return torch.zeros(differs.shape, device=device, dtype=dtype).masked_fill(differs, SHIFT_MASK_VALUE)


class WindowMSA(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias: (B, nW, N, C) -> (B, nW, N, C),
    N = Wh * Ww tokens per window.

    Logits are q k^T * scale + bias[relative_position_index] (+ an optional additive mask per window), computed
    by ``F.scaled_dot_product_attention`` with bias and mask as one float mask; windows and heads share one
    dimension so that the (nW * heads, N, N) mask broadcasts over the batch (4-d inputs, which the fused
    kernels take). In float32 it agrees with the explicit softmax formula within about 1e-6 relative.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: tuple[int, int], qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims, self.num_heads, self.window_size = embed_dims, num_heads, tuple(window_size)
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        self.attn_drop = attn_drop_rate
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        # a persistent buffer: MMSegmentation's checkpoints hold it
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N): the bias table looked up for every (query, key) pair."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, nW, N, C); ``mask`` (nW, N, N) is added to the logits of each window."""
        b, nw, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, nw, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.reshape(3, b, nw * heads, n, c // heads)  # window-major, then head
        bias = self.position_bias()[None]  # (1, heads, N, N)
        bias = bias.expand(nw, -1, -1, -1) if mask is None else bias + mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.reshape(nw * heads, n, n).to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        out = out.reshape(b, nw, heads, n, c // heads).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj_drop(self.proj(out))


class ShiftWindowMSA(nn.Module):
    """(Shifted-)window attention over a token map: (B, H*W, C) -> (B, H*W, C), before the residual.

    The map is zero-padded at the bottom/right to a multiple of ``window_size`` (padded tokens take part in the
    attention, as in MMSegmentation), rolled up-left by ``shift_size`` when shifting (with the attention mask),
    split into windows, attended, and put back; stochastic depth (``drop``) applies to the result.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int = 0,
                 qkv_bias: bool = True, qk_scale: float | None = None, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.window_size, self.shift_size = window_size, shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, (window_size, window_size), qkv_bias, qk_scale,
                               attn_drop_rate, proj_drop_rate)
        self.drop = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, length, c = x.shape
        h, w = hw
        if length != h * w:
            raise ValueError(f"got {length} tokens for a {h}x{w} map")
        ws, shift = self.window_size, self.shift_size
        x = F.pad(x.reshape(b, h, w, c), (0, 0, 0, (-w) % ws, 0, (-h) % ws))  # (B, Hp, Wp, C)
        padded_hw = (x.shape[1], x.shape[2])
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(padded_hw, ws, shift, device=x.device, dtype=x.dtype)
        x = window_reverse(self.w_msa(window_partition(x, ws), mask), padded_hw, ws)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return self.drop(x[:, :h, :w].reshape(b, h * w, c))


class SwinBlock(nn.Module):
    """x + attn(norm1(x)), then + ffn(norm2(x)): (B, H*W, C) -> (B, H*W, C); ``shift`` shifts the windows by
    ``window_size // 2``. ``drop_rate`` drops after the attention projection and in the FFN; ``drop_path_rate``
    is stochastic depth on both branches."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, window_size: int = 7,
                 shift: bool = False, qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 act_cfg: dict = dict(type="GELU"),  # noqa: B006 - never mutated
                 norm_cfg: dict = dict(type="LN"),  # noqa: B006 - never mutated
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = _token_norm(norm_cfg, embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size, window_size // 2 if shift else 0, qkv_bias,
                                   qk_scale, attn_drop_rate, drop_rate, drop_path_rate)
        self.norm2 = _token_norm(norm_cfg, embed_dims)
        self.ffn = FFN(embed_dims, feedforward_channels, num_fcs=2, act_cfg=act_cfg, ffn_drop=drop_rate,
                       drop_path=drop_path_rate)

    def _forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hw)
        return self.ffn(self.norm2(x), identity=x)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, hw, use_reentrant=False)
        return self._forward(x, hw)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (step ``stride``), norm, project: (B, H*W, C) -> (B, h*w, out).

    The map is zero-padded at the bottom/right so that no pixel is left out. The 4C features are ordered as
    ``F.unfold`` orders them, channel-major: feature c * 4 + 2 * dy + dx holds channel c of pixel (dy, dx)
    (MMSegmentation's order; the original Swin checkpoints concatenate pixel-major and need a permutation).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2,
                 norm_cfg: dict | None = dict(type="LN")):  # noqa: B006 - never mutated
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.norm = _token_norm(norm_cfg, 4 * in_channels) if norm_cfg is not None else None
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        b, length, c = x.shape
        h, w = hw
        if length != h * w:
            raise ValueError(f"got {length} tokens for a {h}x{w} map")
        x = adaptive_pad(x.transpose(1, 2).reshape(b, c, h, w), 2, self.stride)
        out_hw = ((x.shape[2] - 2) // self.stride + 1, (x.shape[3] - 2) // self.stride + 1)
        x = F.unfold(x, kernel_size=2, stride=self.stride).transpose(1, 2)  # (B, h*w, 4C)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x), out_hw


class SwinBlockSequence(nn.Module):
    """One stage: ``depth`` blocks (odd ones shifted), then the optional patch merging ``downsample``.

    forward returns (next stage's tokens, their hw, this stage's output tokens, their hw).
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, depth: int,
                 window_size: int = 7, qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float | Sequence[float] = 0.0,
                 downsample: PatchMerging | None = None,
                 act_cfg: dict = dict(type="GELU"),  # noqa: B006 - never mutated
                 norm_cfg: dict = dict(type="LN"),  # noqa: B006 - never mutated
                 with_cp: bool = False):
        super().__init__()
        rates = [drop_path_rate] * depth if isinstance(drop_path_rate, (int, float)) else list(drop_path_rate)
        if len(rates) != depth:
            raise ValueError(f"got {len(rates)} drop path rates for {depth} blocks")
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, feedforward_channels, window_size, shift=i % 2 == 1, qkv_bias=qkv_bias,
                      qk_scale=qk_scale, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                      drop_path_rate=rates[i], act_cfg=act_cfg, norm_cfg=norm_cfg, with_cp=with_cp)
            for i in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw: tuple[int, int]
                ) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, tuple[int, int]]:
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw, x, hw
        down, down_hw = self.downsample(x, hw)
        return down, down_hw, x, hw


class SwinTransformer(FreezableBackbone):
    """Swin Transformer; returns the normed outputs of the stages in ``out_indices``.

    Args (the config's keys, MMSegmentation's names and defaults):
        pretrain_img_size: the pretraining size (int or (h, w)); sizes ``absolute_pos_embed``.
        in_channels, embed_dims: input channels and the first stage's width (doubled by every merging).
        patch_size: the patch embedding's kernel and stride (must equal ``strides[0]``).
        window_size: attention window side (7 or 12 in the zoo); mlp_ratio: FFN width / token width.
        depths, num_heads: blocks and attention heads per stage.
        strides: patch embedding stride, then each patch merging's stride.
        out_indices: stages (0-based) whose output is returned.
        qkv_bias, qk_scale: bias of the q/k/v projection; logit scale (default head_dims ** -0.5).
        patch_norm: a LayerNorm after the patch embedding and inside each patch merging.
        drop_rate, attn_drop_rate: dropout after the position embedding / projections, on attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 at the first block to this at the last.
        use_abs_pos_embed: add a learned position embedding ``absolute_pos_embed`` for the pretraining grid
            (the input grid must then have that size).
        act_cfg, norm_cfg: FFN activation; token norm (LayerNorm).
        with_cp: gradient checkpointing per block when the input requires grad.
        frozen_stages: -1 freezes nothing; k >= 0 freezes the patch embedding and stages 1..k (with their
            output norms): eval mode, no gradients.
        pretrained, init_cfg: where pretrained weights come from; stored, never loaded here.

    Attributes:
        out_channels: embed_dims * 2**i per returned stage i.
        out_strides: the product of ``strides`` up to stage i (inputs are padded up to multiples of them).
    """

    def __init__(
        self,
        pretrain_img_size: int | Sequence[int] = 224,
        in_channels: int = 3,
        embed_dims: int = 96,
        patch_size: int = 4,
        window_size: int = 7,
        mlp_ratio: float = 4,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        strides: Sequence[int] = (4, 2, 2, 2),
        out_indices: Sequence[int] = (0, 1, 2, 3),
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        patch_norm: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        use_abs_pos_embed: bool = False,
        act_cfg: dict = dict(type="GELU"),  # noqa: B006 - never mutated
        norm_cfg: dict = dict(type="LN"),  # noqa: B006 - never mutated
        with_cp: bool = False,
        pretrained: str | None = None,
        frozen_stages: int = -1,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        if isinstance(pretrain_img_size, int):
            pretrain_img_size = (pretrain_img_size, pretrain_img_size)
        pretrain_img_size = tuple(pretrain_img_size) * (2 if len(pretrain_img_size) == 1 else 1)
        if len(pretrain_img_size) != 2:
            raise ValueError(f"pretrain_img_size must be an int or (h, w), got {pretrain_img_size}")
        num_stages = len(depths)
        if len(num_heads) != num_stages or len(strides) != num_stages:
            raise ValueError(f"depths, num_heads and strides need one entry per stage, got {depths}, "
                             f"{num_heads}, {strides}")
        if strides[0] != patch_size:
            raise ValueError(f"strides[0] ({strides[0]}) must equal patch_size ({patch_size}): non-overlapping "
                             "patch embedding")
        out_indices = tuple(out_indices)
        if any(i not in range(num_stages) for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must pick stages among 0..{num_stages - 1}")
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in [-1, {num_stages}], got {frozen_stages}")
        check_pretrained(pretrained, init_cfg)
        self.pretrained = pretrained
        self.init_cfg = dict(type="Pretrained", checkpoint=pretrained) if pretrained else init_cfg
        self.out_indices, self.frozen_stages = out_indices, frozen_stages
        self.use_abs_pos_embed, self.with_cp = use_abs_pos_embed, with_cp

        self.patch_embed = PatchEmbed(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size,
                                      padding="corner", norm_cfg=norm_cfg if patch_norm else None)
        if use_abs_pos_embed:
            num_patches = (pretrain_img_size[0] // patch_size) * (pretrain_img_size[1] // patch_size)
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dims))
        self.drop_after_pos = nn.Dropout(drop_rate)

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        widths = [embed_dims * 2**i for i in range(num_stages)]
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            downsample = None
            if i < num_stages - 1:
                downsample = PatchMerging(widths[i], widths[i + 1], stride=strides[i + 1],
                                          norm_cfg=norm_cfg if patch_norm else None)
            self.stages.append(SwinBlockSequence(
                widths[i], num_heads[i], int(mlp_ratio * widths[i]), depths[i], window_size, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, rates[sum(depths[:i]):sum(depths[:i + 1])], downsample, act_cfg,
                norm_cfg, with_cp))
        for i in out_indices:  # checkpoints key the output norms norm0..norm3 by stage, only for the outputs
            self.add_module(f"norm{i}", _token_norm(norm_cfg, widths[i]))
        self.out_channels = [widths[i] for i in out_indices]
        self.out_strides = [math.prod(strides[:i + 1]) for i in out_indices]
        self.init_weights()
        self._freeze_stages()

    def init_weights(self) -> None:
        """Training from scratch (MMSegmentation's init without ``init_cfg``): truncated normal (std 0.02)
        Linear weights, position embedding and bias tables, zero Linear biases, LayerNorms at 1 / 0."""
        if self.use_abs_pos_embed:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.patch_embed, self.drop_after_pos]
        for i in range(self.frozen_stages):
            if i in self.out_indices:
                modules.append(getattr(self, f"norm{i}"))
            modules.append(self.stages[i])
        return modules

    def _freeze_stages(self) -> None:
        super()._freeze_stages()
        if self.frozen_stages >= 0 and self.use_abs_pos_embed:
            self.absolute_pos_embed.requires_grad = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, in_channels, H, W) -> [(N, embed_dims * 2**i, h_i, w_i)] for i in ``out_indices``; h_0 =
        ceil(H / patch_size), each later stage ceil(h / stride)."""
        x, hw = self.patch_embed(x)  # (N, h * w, C)
        if self.use_abs_pos_embed:
            if x.shape[1] != self.absolute_pos_embed.shape[1]:
                raise ValueError(f"absolute_pos_embed holds {self.absolute_pos_embed.shape[1]} positions, the "
                                 f"input gives {hw[0]}x{hw[1]} tokens: use the pretraining size")
            x = x + self.absolute_pos_embed
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw, out, out_hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.transpose(1, 2).reshape(out.shape[0], -1, *out_hw).contiguous())
        return outs
