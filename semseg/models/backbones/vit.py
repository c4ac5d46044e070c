"""Vision Transformer backbone (Dosovitskiy et al., ICLR 2021) with MMSegmentation's parameter names.

Patches of ``patch_size`` become tokens (``patch_embed``), a class token (``cls_token``) is prepended and a
learned position embedding (``pos_embed``, for the ``img_size`` grid plus the class token) is added, then
``num_layers`` pre-norm encoder layers (``layers.i``: ``ln1``, ``attn``, ``ln2``, ``ffn``) run. The tokens
after the layers of ``out_indices`` come back as (N, embed_dims, H / patch, W / patch) maps. DeiT checkpoints
use the same module with other widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.utils.checkpoint as cp
from torch import nn

from semseg.models.backbones.base import check_pretrained
from semseg.nn.norm import build_norm
from semseg.nn.resize import resize
from semseg.nn.transformer import FFN, MultiheadAttention, PatchEmbed


def _layer_norm(norm_cfg: dict, channels: int) -> nn.Module:
    """The token norm of ``norm_cfg``; only LayerNorm works on (B, L, C) tokens (and is keyed ``ln*``)."""
    name, layer = build_norm(norm_cfg, channels)
    if name != "ln":
        raise ValueError(f"the transformer's norm_cfg must be of type 'LN', got {norm_cfg.get('type')!r}")
    return layer


class TransformerEncoderLayer(nn.Module):
    """Pre-norm encoder layer: x + attn(ln1(x)), then + ffn(ln2(x)); (B, L, C) -> (B, L, C).

    ``drop_rate`` drops after the attention projection and inside the FFN; ``drop_path_rate`` is stochastic
    depth on the FFN branch only (as in MMSegmentation); ``qkv_bias`` sets the biases of both attention
    projections.
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, num_fcs: int = 2, qkv_bias: bool = True,
                 act_cfg: dict = dict(type="GELU"),  # noqa: B006 - never mutated
                 norm_cfg: dict = dict(type="LN"),  # noqa: B006 - never mutated
                 with_cp: bool = False):
        super().__init__()
        self.ln1 = _layer_norm(norm_cfg, embed_dims)
        self.attn = MultiheadAttention(embed_dims, num_heads, attn_drop=attn_drop_rate, proj_drop=drop_rate,
                                       bias=qkv_bias)
        self.ln2 = _layer_norm(norm_cfg, embed_dims)
        self.ffn = FFN(embed_dims, feedforward_channels, num_fcs=num_fcs, act_cfg=act_cfg, ffn_drop=drop_rate,
                       drop_path=drop_path_rate)
        self.with_cp = with_cp

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.ln1(x), identity=x)
        return self.ffn(self.ln2(x), identity=x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def resize_pos_embed(pos_embed: torch.Tensor, input_shape: tuple[int, int], pos_shape: tuple[int, int],
                     mode: str = "bicubic") -> torch.Tensor:
    """Resize the grid part of a position embedding (1, 1 + h * w, C) from ``pos_shape`` (h, w) to
    ``input_shape``; the first (class-token) entry is kept. Returns (1, 1 + H * W, C)."""
    pos_h, pos_w = pos_shape
    cls_pos = pos_embed[:, :1]
    grid = pos_embed[:, -pos_h * pos_w:].reshape(1, pos_h, pos_w, -1).permute(0, 3, 1, 2)
    grid = resize(grid, size=input_shape, mode=mode, align_corners=False)
    return torch.cat((cls_pos, grid.flatten(2).transpose(1, 2)), dim=1)


class VisionTransformer(nn.Module):
    """ViT; returns the token maps after the layers of ``out_indices`` (and first the embedded input with
    ``out_origin``).

    Args (the config's keys, MMSegmentation's names and defaults):
        img_size: the training size (int or (h, w)); it sizes ``pos_embed``, which is resized (bicubic by
            default) for inputs whose token count differs. As in MMSegmentation, an input grid with the same
            token count as the training grid (e.g. 16x64 patches for a 32x32 ``pos_embed``) uses it unresized.
        patch_size, patch_pad: patch size and the padding of sizes it does not divide ('corner': bottom/right
            zeros, 'same', or an int for the conv's own padding).
        in_channels, embed_dims, num_layers, num_heads, mlp_ratio: the architecture (FFN width mlp_ratio * C).
        out_origin: also return the embedded input (before the layers), first.
        out_indices: layers (0-based) whose output is returned; -1 is the last.
        qkv_bias: biases in the attention projections.
        drop_rate, attn_drop_rate: dropout after the position embedding / projections, on attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 at the first layer to this at the last.
        with_cls_token: keep the class token in the layers' input (it is always added to the position
            embedding first).
        output_cls_token: return [map, class token (N, C)] pairs instead of maps (needs ``with_cls_token``).
        norm_cfg, act_cfg: LayerNorm config and FFN activation.
        patch_norm, patch_bias: a norm after the patch embedding, a bias in its conv.
        pre_norm: a norm (``ln_pre``) before the layers; final_norm: a norm (``ln1``) after the last layer.
        interpolate_mode: how ``pos_embed`` is resized.
        num_fcs: Linear layers per FFN.
        norm_eval: keep the LayerNorms in eval mode in training (no effect on their outputs: kept for configs).
        with_cp: gradient checkpointing per layer when the input requires grad.
        frozen_exclude: parameters whose name contains none of these strings get ``requires_grad=False``;
            ``['all']`` freezes nothing.
        pretrained, init_cfg: where pretrained weights come from; stored, never loaded here.

    Attributes:
        out_channels: ``embed_dims`` per returned map.
        out_strides: ``patch_size`` per returned map (inputs are padded up to a multiple of it).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        patch_pad: str | int = "corner",
        in_channels: int = 3,
        embed_dims: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: int = 4,
        out_origin: bool = False,
        out_indices: int | Sequence[int] = -1,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        with_cls_token: bool = True,
        output_cls_token: bool = False,
        norm_cfg: dict = dict(type="LN"),  # noqa: B006 - never mutated
        act_cfg: dict = dict(type="GELU"),  # noqa: B006 - never mutated
        patch_norm: bool = False,
        patch_bias: bool = False,
        pre_norm: bool = False,
        final_norm: bool = False,
        interpolate_mode: str = "bicubic",
        num_fcs: int = 2,
        norm_eval: bool = False,
        with_cp: bool = False,
        frozen_exclude: Sequence[str] = ("all",),
        pretrained: str | None = None,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(img_size) == 1:
            img_size = img_size * 2
        if len(img_size) != 2:
            raise ValueError(f"img_size must be an int or (h, w), got {img_size}")
        if output_cls_token and not with_cls_token:
            raise ValueError("output_cls_token=True needs with_cls_token=True")
        if isinstance(out_indices, int):
            out_indices = (num_layers - 1 if out_indices == -1 else out_indices,)
        out_indices = tuple(out_indices)
        if any(i not in range(num_layers) for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must pick layers among 0..{num_layers - 1}")
        check_pretrained(pretrained, init_cfg)
        self.pretrained, self.init_cfg = pretrained, init_cfg
        self.img_size, self.patch_size = img_size, patch_size
        self.interpolate_mode = interpolate_mode
        self.out_origin, self.out_indices = out_origin, out_indices
        self.with_cls_token, self.output_cls_token = with_cls_token, output_cls_token
        self.pre_norm, self.final_norm = pre_norm, final_norm
        self.norm_eval, self.with_cp = norm_eval, with_cp
        self.frozen_exclude = tuple(frozen_exclude)

        self.patch_embed = PatchEmbed(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size,
                                      padding=patch_pad, bias=patch_bias, norm_cfg=norm_cfg if patch_norm else None)
        self.pos_shape = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_shape[0] * self.pos_shape[1] + 1, embed_dims))
        self.drop_after_pos = nn.Dropout(drop_rate)
        if pre_norm:
            self.ln_pre = _layer_norm(norm_cfg, embed_dims)
        rates = torch.linspace(0, drop_path_rate, num_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dims, num_heads, mlp_ratio * embed_dims, drop_rate=drop_rate,
                                    attn_drop_rate=attn_drop_rate, drop_path_rate=rate, num_fcs=num_fcs,
                                    qkv_bias=qkv_bias, act_cfg=act_cfg, norm_cfg=norm_cfg, with_cp=with_cp)
            for rate in rates)
        if final_norm:
            self.ln1 = _layer_norm(norm_cfg, embed_dims)  # MMSegmentation's key for the final norm
        num_outs = len(out_indices) + int(out_origin)
        self.out_channels = [embed_dims] * num_outs
        self.out_strides = [patch_size] * num_outs
        self.init_weights()
        self._freeze()

    def init_weights(self) -> None:
        """MMSegmentation's ViT init (timm's 'jax' scheme): truncated normal (std 0.02) position embedding,
        class token and Linear weights, zero Linear biases except the FFN's (N(0, 1e-6)), Kaiming (fan_in)
        patch conv, LayerNorms at 1 / 0. The packed q/k/v projection keeps its Xavier init."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    if "ffn" in name:
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _freeze(self) -> None:
        if "all" in self.frozen_exclude:
            return
        for name, param in self.named_parameters():
            if not any(keep in name for keep in self.frozen_exclude):
                param.requires_grad = False

    def _to_map(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor | list[torch.Tensor]:
        """(N, [1 +] h * w, C) tokens -> (N, C, h, w), or [map, class token] with ``output_cls_token``."""
        grid = tokens[:, 1:] if self.with_cls_token else tokens
        out = grid.transpose(1, 2).reshape(grid.shape[0], -1, *hw).contiguous()
        return [out, tokens[:, 0]] if self.output_cls_token else out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, in_channels, H, W) -> maps (N, embed_dims, ceil(H / patch), ceil(W / patch)) (with the
        'corner' / 'same' padding), one per output."""
        tokens, hw = self.patch_embed(x)  # (N, h * w, C)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        pos_embed = self.pos_embed
        if tokens.shape[1] != pos_embed.shape[1]:  # token count, not grid shape, decides (as MMSegmentation)
            pos_embed = resize_pos_embed(pos_embed, hw, self.pos_shape, self.interpolate_mode)
        tokens = self.drop_after_pos(tokens + pos_embed)
        if not self.with_cls_token:
            tokens = tokens[:, 1:]
        if self.pre_norm:
            tokens = self.ln_pre(tokens)
        outs = [self._to_map(tokens, hw)] if self.out_origin else []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            tokens = layer(tokens)
            if i == last and self.final_norm:
                tokens = self.ln1(tokens)
            if i in self.out_indices:
                outs.append(self._to_map(tokens, hw))
        return outs

    def train(self, mode: bool = True) -> VisionTransformer:
        """Set train/eval mode; with ``norm_eval`` the LayerNorms stay in eval mode."""
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eval()
        return self
