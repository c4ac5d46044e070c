"""VisionTransformer and MultiLevelNeck: shapes, out_channels / out_strides, options, argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.models.backbones.vit import VisionTransformer, resize_pos_embed
from semseg.models.necks.multilevel import MultiLevelNeck
from semseg.nn.transformer import DropPath

TINY = dict(img_size=(32, 48), patch_size=8, embed_dims=16, num_layers=3, num_heads=2)


def tiny(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(**{**TINY, **kwargs}).eval()


@pytest.mark.parametrize(("size", "grid"), [((32, 48), (4, 6)), ((37, 53), (5, 7)), ((13, 17), (2, 3))])
def test_shapes_channels_strides(size: tuple[int, int], grid: tuple[int, int]) -> None:
    model = build("backbone", dict(type="VisionTransformer", out_indices=(0, 2), out_origin=True, **TINY)).eval()
    assert model.out_channels == [16, 16, 16]
    assert model.out_strides == [8, 8, 8]
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    assert [tuple(o.shape) for o in outs] == [(2, 16, *grid)] * 3


def test_default_out_index_is_the_last_layer() -> None:
    model = tiny()
    assert model.out_indices == (2,)
    assert len(model(torch.randn(1, 3, 32, 48))) == 1


def test_output_cls_token_gives_map_and_token_pairs() -> None:
    model = tiny(out_indices=(1,), output_cls_token=True)
    with torch.no_grad():
        (feat, cls), = model(torch.randn(2, 3, 40, 40))
    assert feat.shape == (2, 16, 5, 5) and cls.shape == (2, 16)


def test_without_cls_token_the_layers_see_grid_tokens_only() -> None:
    model = tiny(with_cls_token=False)
    seen = []
    model.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.randn(2, 3, 32, 48))
    assert seen == [(2, 24, 16)]


def test_optional_norms_and_keys() -> None:
    keys = set(tiny().state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.projection.weight", "layers.0.ln1.weight",
            "layers.0.attn.attn.in_proj_weight", "layers.0.attn.attn.out_proj.bias", "layers.0.ln2.bias",
            "layers.0.ffn.layers.0.0.weight", "layers.0.ffn.layers.1.bias"} <= keys
    assert not any(k.startswith(("ln1", "ln_pre", "patch_embed.norm")) for k in keys)
    assert "patch_embed.projection.bias" not in keys
    full = set(tiny(final_norm=True, pre_norm=True, patch_norm=True, patch_bias=True).state_dict())
    assert full - keys == {"ln1.weight", "ln1.bias", "ln_pre.weight", "ln_pre.bias", "patch_embed.norm.weight",
                           "patch_embed.norm.bias", "patch_embed.projection.bias"}
    assert tiny().pos_embed.shape == (1, 4 * 6 + 1, 16)


def test_pos_embed_resized_only_when_the_token_count_differs() -> None:
    model = tiny(out_origin=True, out_indices=(0,), drop_rate=0.0)
    with torch.no_grad():
        nn.init.zeros_(model.cls_token)
        origin = model(torch.zeros(1, 3, 32, 48))[0]  # zero image, no patch bias: the grid of pos_embed
        assert torch.allclose(origin.flatten(2).transpose(1, 2), model.pos_embed[:, 1:])
        small = model(torch.zeros(1, 3, 16, 24))[0]
        resized = resize_pos_embed(model.pos_embed, (2, 3), (4, 6), "bicubic")
        assert torch.allclose(small.flatten(2).transpose(1, 2), resized[:, 1:])
        transposed = model(torch.zeros(1, 3, 48, 32))[0]  # 6x4 grid: same count, used as it is
        assert torch.allclose(transposed.flatten(2).transpose(1, 2), model.pos_embed[:, 1:])


def test_resize_pos_embed_keeps_the_class_entry_and_same_size_is_identity() -> None:
    pos = torch.randn(1, 1 + 12, 4)
    assert torch.allclose(resize_pos_embed(pos, (3, 4), (3, 4)), pos, atol=1e-6)
    out = resize_pos_embed(pos, (5, 7), (3, 4), "bilinear")
    assert out.shape == (1, 36, 4) and torch.equal(out[:, 0], pos[:, 0])


def test_drop_path_rates_rise_linearly_on_the_ffn_only() -> None:
    model = tiny(drop_path_rate=0.2)
    ffn_rates = [getattr(layer.ffn.drop_path, "drop_prob", 0.0) for layer in model.layers]
    assert ffn_rates == pytest.approx([0.0, 0.1, 0.2])
    assert not any(isinstance(layer.attn.drop_path, DropPath) for layer in model.layers)


def test_frozen_exclude_and_norm_eval() -> None:
    model = tiny(frozen_exclude=["pos_embed", "ln"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "pos_embed" in trainable and "layers.0.ln1.weight" in trainable
    assert "cls_token" not in trainable and "layers.0.attn.attn.in_proj_weight" not in trainable
    assert all(p.requires_grad for p in tiny().parameters())
    model = tiny(norm_eval=True).train()
    assert model.training and not model.layers[0].ln1.training and model.layers[0].attn.training


def test_with_cp_gives_the_same_gradients() -> None:
    x = torch.randn(2, 3, 21, 27, requires_grad=True)
    grads = []
    for with_cp in (False, True):
        model = tiny(with_cp=with_cp).train()
        model(x)[0].square().mean().backward()
        grads.append(model.patch_embed.projection.weight.grad)
    assert torch.allclose(*grads, atol=1e-6)


def test_init_weights() -> None:
    model = tiny()
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.3)
    assert model.layers[0].attn.attn.out_proj.bias.abs().max() == 0
    assert 0 < model.layers[0].ffn.layers[0][0].bias.abs().max() < 1e-4


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="output_cls_token"):
        tiny(with_cls_token=False, output_cls_token=True)
    with pytest.raises(ValueError, match="out_indices"):
        tiny(out_indices=(0, 3))
    with pytest.raises(ValueError, match="'LN'"):
        tiny(norm_cfg=dict(type="BN"))
    with pytest.raises(ValueError, match="pretrained or init_cfg"):
        tiny(pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="a.pth"))
    with pytest.raises(ValueError, match="img_size"):
        tiny(img_size=(1, 2, 3))
    assert tiny(pretrained="pretrain/vit.pth").pretrained == "pretrain/vit.pth"


def test_builds_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = VisionTransformer(**TINY)
    assert model.pos_embed.is_meta


@pytest.mark.parametrize(("in_channels", "scales"), [([8, 8, 8, 8], [4, 2, 1, 0.5]), ([8], [0.5, 1, 2])])
def test_multilevel_neck_shapes(in_channels: list[int], scales: list[float]) -> None:
    neck = build("neck", dict(type="MultiLevelNeck", in_channels=in_channels, out_channels=6, scales=scales,
                              norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU"))).eval()
    inputs = [torch.randn(2, c, 5, 7) for c in in_channels]
    with torch.no_grad():
        outs = neck(inputs)
    assert [tuple(o.shape) for o in outs] == [(2, 6, int(5 * s), int(7 * s)) for s in scales]
    assert {k.split(".")[0] for k in neck.state_dict()} == {"lateral_convs", "convs"}
    assert len(neck.lateral_convs) == len(in_channels) and len(neck.convs) == len(scales)


def test_multilevel_neck_errors() -> None:
    with pytest.raises(TypeError, match="list"):
        MultiLevelNeck(8, 4)
    with pytest.raises(ValueError, match="scales"):
        MultiLevelNeck([8, 8], 4, scales=[1, 2, 4])
    with pytest.raises(ValueError, match="inputs"):
        MultiLevelNeck([8, 8], 4, scales=[1, 2])([torch.randn(1, 8, 4, 4)])
