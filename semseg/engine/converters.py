"""Pretrained transformer weights from their original layouts into MMSegmentation's keys, and the resizes
MMSegmentation's backbones apply when they load them.

The configs name ImageNet files as their authors published them: timm's ViT and DeiT
(``pretrain/jx_vit_base_p16_224-80ecf9dd.pth``, ``pretrain/deit_small_patch16_224-cd65a155.pth``) and the
official Swin releases. MMSegmentation's users convert these once with ``tools/model_converters/vit2mmseg.py``
and ``swin2mmseg.py``; here the loader converts them on the fly (:func:`fit_pretrained`) when a file's keys
are in the source layout, so both the original and the converted file load.

The converters are pure functions over explicit key maps: each rule maps a source key pattern to a target
key (and, for Swin's patch merging, reorders channels). A key no rule matches is kept as it is, so the
loader reports it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from semseg.models.backbones.swin import SwinTransformer
from semseg.models.backbones.vit import VisionTransformer, resize_pos_embed

Rule = tuple[str, str, Callable[[Tensor], Tensor] | None]


def unfold_channel_order(x: Tensor) -> Tensor:
    """Official Swin patch-merging channels -> ``nn.Unfold``'s, along the last dim (4 * C).

    The official PatchMerging concatenates the 2x2 neighbours as blocks of C channels in the order
    (row, col) = (0, 0), (1, 0), (0, 1), (1, 1); MMSegmentation's unfolds them, channel-major:
    index c * 4 + row * 2 + col. Works on the reduction weight (out, 4C) and the norm's (4C,).
    """
    blocks = x.unflatten(-1, (4, -1))[..., [0, 2, 1, 3], :]  # (..., 4, C), blocks now in row-major order
    return blocks.transpose(-1, -2).flatten(-2)  # (..., C * 4)


# timm's VisionTransformer (also DeiT's) -> semseg / MMSegmentation's VisionTransformer (vit2mmseg's map).
VIT_RULES: tuple[Rule, ...] = (
    (r"cls_token", "cls_token", None),
    (r"pos_embed", "pos_embed", None),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.projection.\1", None),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"layers.\1.ln\2.\3", None),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"layers.\1.attn.attn.in_proj_\2", None),  # q, k, v packed
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"layers.\1.attn.attn.out_proj.\2", None),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"layers.\1.ffn.layers.0.0.\2", None),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"layers.\1.ffn.layers.1.\2", None),
    (r"norm\.(weight|bias)", r"ln1.\1", None),  # the final norm: MMSegmentation's ViT keys it ``ln1``
)
# timm's classifier (``head``; DeiT-distilled ``head_dist``; ``pre_logits`` of the in21k files).
VIT_CLASSIFIER = ("head.", "head_dist.", "pre_logits.")

_BLOCK = r"layers\.(\d+)\.blocks\.(\d+)\."
_STAGE_BLOCK = r"stages.\1.blocks.\2."
# The official Swin release (microsoft/Swin-Transformer) -> MMSegmentation's SwinTransformer (swin2mmseg's map).
SWIN_RULES: tuple[Rule, ...] = (
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.projection.\1", None),
    (r"patch_embed\.norm\.(weight|bias)", r"patch_embed.norm.\1", None),
    (r"absolute_pos_embed", "absolute_pos_embed", None),
    (_BLOCK + r"norm([12])\.(weight|bias)", _STAGE_BLOCK + r"norm\3.\4", None),
    (_BLOCK + r"attn\.(qkv|proj)\.(weight|bias)", _STAGE_BLOCK + r"attn.w_msa.\3.\4", None),  # qkv packed
    (_BLOCK + r"attn\.(relative_position_bias_table|relative_position_index)", _STAGE_BLOCK + r"attn.w_msa.\3",
     None),
    (_BLOCK + r"mlp\.fc1\.(weight|bias)", _STAGE_BLOCK + r"ffn.layers.0.0.\3", None),
    (_BLOCK + r"mlp\.fc2\.(weight|bias)", _STAGE_BLOCK + r"ffn.layers.1.\3", None),
    (r"layers\.(\d+)\.downsample\.reduction\.weight", r"stages.\1.downsample.reduction.weight",
     unfold_channel_order),
    (r"layers\.(\d+)\.downsample\.norm\.(weight|bias)", r"stages.\1.downsample.norm.\2", unfold_channel_order),
)
# The classifier (``head``) and its norm over the last stage (``norm``; MMSegmentation's Swin has one norm
# per output, ``norm0``..``norm3``, and ignores this one), and the shifted blocks' attention masks, which
# the official model stores but MMSegmentation's computes from the input size.
SWIN_DROPPED = (r"head\..*", r"norm\.(weight|bias)", r"(layers|stages)\.\d+\.blocks\.\d+\.attn_mask")

_VIT_SOURCE_KEY = "blocks.0.attn.qkv.weight"
_SWIN_SOURCE_KEY = "layers.0.blocks.0.attn.qkv.weight"


def apply_rules(state_dict: dict[str, Tensor], rules: tuple[Rule, ...]) -> dict[str, Tensor]:
    """Each key renamed (and its value transformed) by the first rule whose pattern matches it whole; keys
    no rule matches are kept unchanged."""
    compiled = [(re.compile(pattern), target, transform) for pattern, target, transform in rules]
    out = {}
    for key, value in state_dict.items():
        for pattern, target, transform in compiled:
            if pattern.fullmatch(key):
                key, value = pattern.sub(target, key), transform(value) if transform else value
                break
        out[key] = value
    return out


def is_timm_vit(state_dict: dict[str, Tensor]) -> bool:
    """Whether a ViT/DeiT file is in timm's layout (``blocks.N.attn.qkv``), not yet converted."""
    return _VIT_SOURCE_KEY in state_dict


def is_official_swin(state_dict: dict[str, Tensor]) -> bool:
    """Whether a Swin file is in the official layout (``layers.N.blocks.M.attn.qkv``), not yet converted."""
    return _SWIN_SOURCE_KEY in state_dict


def convert_timm_vit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A timm ViT / DeiT state dict in MMSegmentation's ViT keys (:data:`VIT_RULES`), classifier dropped."""
    return apply_rules({k: v for k, v in state_dict.items() if not k.startswith(VIT_CLASSIFIER)}, VIT_RULES)


def convert_official_swin(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """An official Swin state dict in MMSegmentation's Swin keys (:data:`SWIN_RULES`): ``layers`` ->
    ``stages``, ``attn`` -> ``attn.w_msa``, ``mlp`` -> ``ffn``, patch-merging channels reordered; the
    classifier, its norm and the attention masks (:data:`SWIN_DROPPED`) dropped."""
    dropped = [re.compile(p) for p in SWIN_DROPPED]
    kept = {k: v for k, v in state_dict.items() if not any(p.fullmatch(k) for p in dropped)}
    return apply_rules(kept, SWIN_RULES)


# ----------------------------------------------------------------------------------------------------------
# Resizes
# ----------------------------------------------------------------------------------------------------------


def _side(length: int, what: str) -> int:
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"{what} has {length} entries, not a square grid")
    return side


def resize_vit_pos_embed(pos_embed: Tensor, grid: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """A ViT position embedding (1, 1 + s * s, C) of a square s x s grid (plus the class token) resized to
    ``grid`` (h, w): (1, 1 + h * w, C). MMSegmentation's ViT does this when it loads a file trained at
    another size (224 -> 512: 14 x 14 -> 32 x 32), with its ``interpolate_mode``."""
    side = _side(pos_embed.shape[1] - 1, "the pretrained pos_embed (without the class token)")
    return resize_pos_embed(pos_embed, grid, (side, side), mode)


def resize_relative_position_bias_table(table: Tensor, length: int) -> Tensor:
    """A Swin relative position bias table ((2w - 1)^2, heads) resized bicubically, as an image per head, to
    ``length`` = (2w' - 1)^2 rows: a window w file for a window w' model (7 -> 12: 169 -> 529 rows)."""
    side, new_side = _side(table.shape[0], "the relative_position_bias_table"), _side(length, "the target table")
    grid = table.T.reshape(1, -1, side, side)  # (1, heads, 2w - 1, 2w - 1)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(-1, length).T.contiguous()  # (length, heads)


def resize_absolute_pos_embed(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """Swin's absolute position embedding (1, s * s, C) of a square grid resized bicubically to ``grid``
    (h, w): (1, h * w, C)."""
    side = _side(pos_embed.shape[1], "the pretrained absolute_pos_embed")
    maps = pos_embed.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=grid, mode="bicubic", align_corners=False)
    return maps.flatten(2).transpose(1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Fitting a file to a backbone
# ----------------------------------------------------------------------------------------------------------


class Fitted(NamedTuple):
    """A pretrained file fitted to a backbone.

    Attributes:
        state_dict: its tensors in the backbone's keys, resized to the backbone's shapes.
        unused: keys of the file that this configuration of the backbone has no place for and that
            MMSegmentation ignores too (a ViT's final norm without ``final_norm``, its patch bias without
            ``patch_bias``, the Swin classifier's norm); dropped without a warning.
        optional: patterns (whole-key regexes) of backbone keys that the file need not hold; those keep their
            initial values, as in MMSegmentation (Swin's output norms ``norm0``..``norm3`` are not in the
            ImageNet files; its relative position index is computed from the window size).
    """

    state_dict: dict[str, Tensor]
    unused: list[str]
    optional: tuple[str, ...]


_VIT_UNUSED = (r"ln1\.(weight|bias)", r"patch_embed\.projection\.bias")
_SWIN_OPTIONAL = (r"norm\d+\.(weight|bias)", r".*\.relative_position_index")


def _unused(state_dict: dict[str, Tensor], own: dict[str, Tensor], patterns: tuple[str, ...]) -> list[str]:
    return [k for k in state_dict if k not in own and any(re.fullmatch(p, k) for p in patterns)]


def fit_vit(backbone: VisionTransformer, state_dict: dict[str, Tensor]) -> Fitted:
    """A timm or MMSegmentation-layout ViT/DeiT file for ``backbone``: converted when in timm's layout, its
    ``pos_embed`` resized to the backbone's grid when the shapes differ (as MMSegmentation's init_weights)."""
    if is_timm_vit(state_dict):
        state_dict = convert_timm_vit(state_dict)
    own = backbone.state_dict()
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and pos_embed.shape != own["pos_embed"].shape:
        state_dict = {**state_dict, "pos_embed": resize_vit_pos_embed(pos_embed, backbone.pos_shape,
                                                                      backbone.interpolate_mode)}
    unused = _unused(state_dict, own, _VIT_UNUSED)
    return Fitted({k: v for k, v in state_dict.items() if k not in unused}, unused, ())


def fit_swin(backbone: nn.Module, state_dict: dict[str, Tensor]) -> Fitted:
    """An official or MMSegmentation-layout Swin file for ``backbone``: converted when in the official
    layout, ``backbone.`` prefixes removed (as MMSegmentation's Swin does), relative position bias tables
    resized to the backbone's window, ``absolute_pos_embed`` resized to its grid; a relative position
    index of another window size is left out (the backbone keeps its own)."""
    if is_official_swin(state_dict):
        state_dict = convert_official_swin(state_dict)
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    own = backbone.state_dict()
    fitted = {}
    for key, value in state_dict.items():
        target = own.get(key)
        if target is not None and value.shape != target.shape:
            if key.endswith("relative_position_bias_table") and value.shape[1] == target.shape[1]:
                value = resize_relative_position_bias_table(value, target.shape[0])
            elif key.endswith("relative_position_index"):
                continue
            elif key == "absolute_pos_embed" and value.shape[2] == target.shape[2]:
                grid = getattr(backbone, "pos_shape", None) or (_side(target.shape[1], "absolute_pos_embed"),) * 2
                value = resize_absolute_pos_embed(value, tuple(grid))
        fitted[key] = value
    unused = _unused(fitted, own, SWIN_DROPPED)
    return Fitted({k: v for k, v in fitted.items() if k not in unused}, unused, _SWIN_OPTIONAL)


def fit_pretrained(backbone: nn.Module, state_dict: dict[str, Tensor]) -> Fitted:
    """``state_dict`` fitted to ``backbone`` (:func:`fit_vit` for a ViT, :func:`fit_swin` for a Swin), or
    unchanged for the other backbones."""
    if isinstance(backbone, VisionTransformer):
        return fit_vit(backbone, state_dict)
    if isinstance(backbone, SwinTransformer):
        return fit_swin(backbone, state_dict)
    return Fitted(state_dict, [], ())
