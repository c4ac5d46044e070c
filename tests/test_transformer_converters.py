"""Converters of pretrained transformer files (timm ViT / DeiT, official Swin) into MMSegmentation's keys, the
resizes applied on loading, and the loader's use of them.

Synthetic files follow the source key lists (timm's ViT-B/16 and the official Swin-T), shrunk: every source
key is mapped or dropped as the classifier, none is left over.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semseg.build import build
from semseg.engine.converters import (
    SWIN_RULES,
    VIT_RULES,
    convert_official_swin,
    convert_timm_vit,
    fit_pretrained,
    is_official_swin,
    is_timm_vit,
    resize_absolute_pos_embed,
    resize_relative_position_bias_table,
    resize_vit_pos_embed,
    unfold_channel_order,
)
from semseg.engine.pretrained import load_pretrained_backbone

# timm's ViT with C = 32, depth 2, patch 4, trained on a 6 x 6 grid (24 x 24 images): the ViT-B/16 key list.
C, DEPTH, PATCH, GRID = 32, 2, 4, 6
VIT = dict(type="VisionTransformer", img_size=(32, 32), patch_size=PATCH, embed_dims=C, num_layers=DEPTH,
           num_heads=2, out_indices=(0, 1), final_norm=True, patch_bias=True)


def timm_vit_state(seed: int = 0, classes: int = 10) -> dict[str, torch.Tensor]:
    """A timm VisionTransformer state dict (the keys of jx_vit_base_p16_224), small and random."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"cls_token": (1, 1, C), "pos_embed": (1, 1 + GRID * GRID, C),
              "patch_embed.proj.weight": (C, 3, PATCH, PATCH), "patch_embed.proj.bias": (C,)}
    for i in range(DEPTH):
        shapes |= {f"blocks.{i}.norm1.weight": (C,), f"blocks.{i}.norm1.bias": (C,),
                   f"blocks.{i}.attn.qkv.weight": (3 * C, C), f"blocks.{i}.attn.qkv.bias": (3 * C,),
                   f"blocks.{i}.attn.proj.weight": (C, C), f"blocks.{i}.attn.proj.bias": (C,),
                   f"blocks.{i}.norm2.weight": (C,), f"blocks.{i}.norm2.bias": (C,),
                   f"blocks.{i}.mlp.fc1.weight": (4 * C, C), f"blocks.{i}.mlp.fc1.bias": (4 * C,),
                   f"blocks.{i}.mlp.fc2.weight": (C, 4 * C), f"blocks.{i}.mlp.fc2.bias": (C,)}
    shapes |= {"norm.weight": (C,), "norm.bias": (C,), "head.weight": (classes, C), "head.bias": (classes,)}
    return {k: torch.randn(s, generator=gen) * 0.3 for k, s in shapes.items()}


# The official Swin (microsoft/Swin-Transformer) with C = 8, depths (2, 2), heads (1, 2), window 3, 12 x 12
# patch grid: the Swin-T key list (both stages shifted in their second block, merging between them).
SW_C, SW_DEPTHS, SW_HEADS, SW_WINDOW = 8, (2, 2), (1, 2), 3


def official_swin_state(seed: int = 0, window: int = SW_WINDOW, ape: bool = False) -> dict[str, torch.Tensor]:
    """An official SwinTransformer state dict, small and random (relative position index and attention
    masks as the official model stores them)."""
    gen = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (SW_C, 3, 4, 4), "patch_embed.proj.bias": (SW_C,),
                                          "patch_embed.norm.weight": (SW_C,), "patch_embed.norm.bias": (SW_C,)}
    if ape:
        shapes["absolute_pos_embed"] = (1, 12 * 12, SW_C)
    buffers = {}
    for i, (depth, heads) in enumerate(zip(SW_DEPTHS, SW_HEADS, strict=True)):
        c = SW_C * 2**i
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            shapes |= {b + "norm1.weight": (c,), b + "norm1.bias": (c,),
                       b + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads),
                       b + "attn.qkv.weight": (3 * c, c), b + "attn.qkv.bias": (3 * c,),
                       b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
                       b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                       b + "mlp.fc1.weight": (4 * c, c), b + "mlp.fc1.bias": (4 * c,),
                       b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,)}
            buffers[b + "attn.relative_position_index"] = torch.randint(0, (2 * window - 1) ** 2,
                                                                        (window**2, window**2), generator=gen)
            if j % 2:
                buffers[b + "attn_mask"] = torch.zeros(4, window**2, window**2)
        if i < len(SW_DEPTHS) - 1:
            shapes |= {f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
                       f"layers.{i}.downsample.norm.weight": (4 * c,), f"layers.{i}.downsample.norm.bias": (4 * c,)}
    last = SW_C * 2 ** (len(SW_DEPTHS) - 1)
    shapes |= {"norm.weight": (last,), "norm.bias": (last,), "head.weight": (10, last), "head.bias": (10,)}
    return {**{k: torch.randn(s, generator=gen) * 0.3 for k, s in shapes.items()}, **buffers}


# ----------------------------------------------------------------------------------------------------------
# ViT / DeiT
# ----------------------------------------------------------------------------------------------------------


def test_vit_converter_maps_every_timm_key_to_our_vit() -> None:
    source = timm_vit_state()
    assert is_timm_vit(source)
    converted = convert_timm_vit(source)
    ours = build("backbone", dict(VIT))
    assert set(converted) == set(ours.state_dict())  # every key mapped, none left over, classifier dropped
    assert not is_timm_vit(converted)
    expected = {"patch_embed.proj.weight": "patch_embed.projection.weight", "norm.bias": "ln1.bias",
                "blocks.1.norm1.weight": "layers.1.ln1.weight", "blocks.1.norm2.bias": "layers.1.ln2.bias",
                "blocks.0.attn.qkv.weight": "layers.0.attn.attn.in_proj_weight",
                "blocks.0.attn.qkv.bias": "layers.0.attn.attn.in_proj_bias",
                "blocks.1.attn.proj.weight": "layers.1.attn.attn.out_proj.weight",
                "blocks.0.mlp.fc1.bias": "layers.0.ffn.layers.0.0.bias",
                "blocks.1.mlp.fc2.weight": "layers.1.ffn.layers.1.weight"}
    for src, dst in expected.items():
        assert converted[dst] is source[src]


def test_vit_rules_are_whole_key_patterns() -> None:
    for pattern, _, _ in VIT_RULES + SWIN_RULES:
        re.compile(pattern)
    unknown = {"blocks.0.ls1.gamma": torch.ones(3), "dist_token": torch.ones(1, 1, 3)}
    assert convert_timm_vit(unknown) == unknown  # kept, for the loader to report


def test_vit_pos_embed_resize_is_bicubic_on_the_grid_and_keeps_the_class_token() -> None:
    pos = torch.randn(1, 1 + 6 * 6, 5)
    out = resize_vit_pos_embed(pos, (8, 10))
    assert out.shape == (1, 1 + 80, 5)
    assert torch.equal(out[:, 0], pos[:, 0])
    grid = pos[0, 1:].T.reshape(1, 5, 6, 6)
    expected = F.interpolate(grid, size=(8, 10), mode="bicubic", align_corners=False).flatten(2)[0].T
    torch.testing.assert_close(out[0, 1:], expected)
    with pytest.raises(ValueError, match="square"):
        resize_vit_pos_embed(torch.randn(1, 1 + 12, 5), (4, 4))


def _save(tmp_path: Path, obj: dict, name: str = "w.pth") -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("wrapper", ["bare", "model", "state_dict"])  # timm, DeiT, converted-file layouts
def test_timm_vit_file_loads_into_our_vit_resized(tmp_path: Path, wrapper: str) -> None:
    source = timm_vit_state()
    obj = source if wrapper == "bare" else {wrapper: source}
    backbone = build("backbone", dict(VIT))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = load_pretrained_backbone(backbone, _save(tmp_path, obj))
    assert result.ok
    state = backbone.state_dict()
    assert torch.equal(state["layers.1.attn.attn.in_proj_weight"], source["blocks.1.attn.qkv.weight"])
    assert torch.equal(state["pos_embed"], resize_vit_pos_embed(source["pos_embed"], (8, 8)))


def test_vit_without_final_norm_or_patch_bias_ignores_them_quietly(tmp_path: Path) -> None:
    """As MMSegmentation: the timm final norm and patch bias have no place in such a ViT (not a warning)."""
    backbone = build("backbone", {**VIT, "final_norm": False, "patch_bias": False})
    fitted = fit_pretrained(backbone, timm_vit_state())
    assert sorted(fitted.unused) == ["ln1.bias", "ln1.weight", "patch_embed.projection.bias"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_pretrained_backbone(backbone, _save(tmp_path, timm_vit_state())).ok


def test_converted_vit_file_loads_the_same(tmp_path: Path) -> None:
    source = timm_vit_state()
    a, b = build("backbone", dict(VIT)), build("backbone", dict(VIT))
    load_pretrained_backbone(a, _save(tmp_path, source, "timm.pth"))
    load_pretrained_backbone(b, _save(tmp_path, convert_timm_vit(source), "mmseg.pth"))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_vit_file_of_another_width_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="shape mismatches"):
        load_pretrained_backbone(build("backbone", {**VIT, "embed_dims": 16}), _save(tmp_path, timm_vit_state()))


# ----------------------------------------------------------------------------------------------------------
# Swin
# ----------------------------------------------------------------------------------------------------------


SWIN = dict(type="SwinTransformer", pretrain_img_size=48, embed_dims=SW_C, depths=SW_DEPTHS, num_heads=SW_HEADS,
            window_size=SW_WINDOW, strides=(4, 2), out_indices=(0, 1))
OUTPUT_NORMS = {"norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias"}


def test_swin_converter_maps_every_official_key() -> None:
    source = official_swin_state()
    assert is_official_swin(source)
    converted = convert_official_swin(source)
    # Every key mapped; MMSegmentation's output norms (norm0, norm1) are not in an ImageNet file.
    assert set(converted) == set(build("backbone", dict(SWIN)).state_dict()) - OUTPUT_NORMS
    assert converted["stages.1.blocks.1.attn.w_msa.qkv.weight"] is source["layers.1.blocks.1.attn.qkv.weight"]
    assert converted["stages.0.blocks.0.ffn.layers.1.bias"] is source["layers.0.blocks.0.mlp.fc2.bias"]
    assert torch.equal(converted["stages.0.downsample.reduction.weight"],
                       unfold_channel_order(source["layers.0.downsample.reduction.weight"]))


def test_unfold_channel_order_turns_official_merging_into_unfold_merging() -> None:
    """Official: concat(x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) @ W.T (then norm);
    MMSegmentation: nn.Unfold(2, stride=2) channels @ W'.T. Same result after reordering W and the norm."""
    gen = torch.Generator().manual_seed(0)
    c, out = 3, 5
    x = torch.randn(2, c, 6, 8, generator=gen)  # (N, C, H, W)
    weight = torch.randn(out, 4 * c, generator=gen)
    norm_w, norm_b = torch.randn(4 * c, generator=gen), torch.randn(4 * c, generator=gen)
    nhwc = x.permute(0, 2, 3, 1)
    official = torch.cat([nhwc[:, r::2, s::2] for r, s in ((0, 0), (1, 0), (0, 1), (1, 1))], dim=-1)
    official = F.layer_norm(official, (4 * c,), norm_w, norm_b) @ weight.T  # (N, H/2, W/2, out)
    unfolded = F.unfold(x, kernel_size=2, stride=2).transpose(1, 2)  # (N, H/2 * W/2, C * 4)
    ours = F.layer_norm(unfolded, (4 * c,), unfold_channel_order(norm_w), unfold_channel_order(norm_b))
    ours = ours @ unfold_channel_order(weight).T
    torch.testing.assert_close(ours, official.flatten(1, 2))


def test_relative_position_bias_table_resize() -> None:
    table = torch.randn(25, 3)  # window 3
    out = resize_relative_position_bias_table(table, 81)  # window 5
    assert out.shape == (81, 3)
    expected = F.interpolate(table.T.reshape(1, 3, 5, 5), size=(9, 9), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, expected.reshape(3, 81).T)
    torch.testing.assert_close(resize_relative_position_bias_table(table, 25), table)


def test_absolute_pos_embed_resize() -> None:
    pos = torch.randn(1, 16, 6)
    out = resize_absolute_pos_embed(pos, (6, 5))
    assert out.shape == (1, 30, 6)
    expected = F.interpolate(pos.reshape(1, 4, 4, 6).permute(0, 3, 1, 2), size=(6, 5), mode="bicubic")
    torch.testing.assert_close(out, expected.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("layout", ["official", "converted", "prefixed"])
def test_swin_file_loads_into_our_swin(tmp_path: Path, layout: str) -> None:
    """Official, converted (swin2mmseg's output, which keeps ``norm`` and the masks) or ``backbone.``-prefixed
    files: all load; the output norms keep their initial values; nothing is reported."""
    source = official_swin_state()
    if layout != "official":
        source = convert_official_swin(source) | {"norm.weight": source["norm.weight"],
                                                  "stages.0.blocks.1.attn_mask": source["layers.0.blocks.1.attn_mask"]}
    if layout == "prefixed":
        source = {f"backbone.{k}": v for k, v in source.items()}
    backbone = build("backbone", dict(SWIN))
    initial = {k: v.clone() for k, v in backbone.state_dict().items() if k in OUTPUT_NORMS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_pretrained_backbone(backbone, _save(tmp_path, {"model": source})).ok
    state = backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in initial.items())
    key = "stages.1.blocks.0.attn.w_msa.qkv.weight"
    assert torch.equal(state[key], source[key if layout == "converted" else
                                          "backbone." + key if layout == "prefixed" else "layers.1.blocks.0.attn.qkv.weight"])


def test_swin_file_of_another_window_and_grid_is_resized(tmp_path: Path) -> None:
    """Window 3 -> 5: bias tables resized, the relative position index kept as the backbone computes it;
    absolute position embedding 12 x 12 -> 16 x 16 (pretrain size 64)."""
    source = official_swin_state(ape=True)
    backbone = build("backbone", {**SWIN, "window_size": 5, "use_abs_pos_embed": True, "pretrain_img_size": 64})
    index = backbone.state_dict()["stages.0.blocks.0.attn.w_msa.relative_position_index"].clone()
    assert load_pretrained_backbone(backbone, _save(tmp_path, source)).ok
    state = backbone.state_dict()
    table = "stages.1.blocks.1.attn.w_msa.relative_position_bias_table"
    assert torch.equal(state[table], resize_relative_position_bias_table(
        source["layers.1.blocks.1.attn.relative_position_bias_table"], 81))
    assert torch.equal(state["stages.0.blocks.0.attn.w_msa.relative_position_index"], index)
    assert torch.equal(state["absolute_pos_embed"], resize_absolute_pos_embed(source["absolute_pos_embed"], (16, 16)))


def test_swin_file_with_other_heads_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="shape mismatches"):
        load_pretrained_backbone(build("backbone", {**SWIN, "num_heads": (2, 2)}), _save(tmp_path, official_swin_state()))
