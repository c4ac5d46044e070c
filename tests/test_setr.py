"""SETR: SETRUPHead (naive / PUP), SETRMLAHead, MLANeck, their blocks (LayerNorm2d, Upsample), and the seven
ViT-L zoo models built on the meta device (no memory): output shapes at the zoo's crop sizes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semseg.build import build
from semseg.config import load_config
from semseg.nn.layer_norm_2d import LayerNorm2d, build_layer_norm_2d
from semseg.nn.upsample import Upsample

BN = dict(type="BN")
SETR_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "semseg" / "configs" / "setr").glob("*.py"))


def feats(channels=(16, 16, 16, 16), size=(7, 9), seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, *size, generator=gen) for c in channels]


def up_head(**kwargs):
    cfg = dict(type="SETRUPHead", in_channels=16, channels=8, in_index=3, num_classes=5, dropout_ratio=0,
               norm_cfg=BN) | kwargs
    return build("head", cfg)


def mla_head(**kwargs):
    cfg = dict(type="SETRMLAHead", in_channels=(16, 16, 16, 16), channels=24, in_index=(0, 1, 2, 3),
               mla_channels=6, num_classes=5, dropout_ratio=0, norm_cfg=BN) | kwargs
    return build("head", cfg)


# ---------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------


def test_layer_norm_2d_normalizes_each_pixel() -> None:
    norm = LayerNorm2d(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 3)
    got = norm(x)
    expected = torch.empty_like(x)
    for n, h, w in itertools.product(range(2), range(5), range(3)):
        v = x[n, :, h, w]
        expected[n, :, h, w] = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-6) * norm.weight + norm.bias
    assert torch.allclose(got, expected, atol=1e-5)
    assert got.is_contiguous()


def test_build_layer_norm_2d_reads_the_config() -> None:
    norm = build_layer_norm_2d(dict(type="LN", eps=1e-3, requires_grad=False), 4)
    assert isinstance(norm, LayerNorm2d) and norm.eps == 1e-3
    assert not any(p.requires_grad for p in norm.parameters())
    with pytest.raises(ValueError, match="'LN'"):
        build_layer_norm_2d(dict(type="BN"), 4)


def test_upsample_floors_the_scaled_size() -> None:
    x = torch.randn(1, 2, 7, 9)
    up = Upsample(scale_factor=1.5, mode="bilinear", align_corners=False)
    out = up(x)
    assert out.shape[-2:] == (10, 13)  # int(10.5), int(13.5)
    # the size, not the factor, sets the sampling grid
    assert torch.allclose(out, F.interpolate(x, size=(10, 13), mode="bilinear", align_corners=False))
    assert Upsample(size=(3, 4))(x).shape[-2:] == (3, 4)
    with pytest.raises(ValueError, match="size or a scale_factor"):
        Upsample()


# ---------------------------------------------------------------------------------------------------------
# SETRUPHead
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_convs", "up_scale", "kernel_size", "size"), [
    (1, 4, 1, (28, 36)),  # naive
    (4, 2, 3, (112, 144)),  # PUP: stride 16 -> 1
    (2, 4, 3, (112, 144)),  # PUP auxiliary heads
    (2, 1.5, 1, (15, 19)),  # floored twice: 7 -> 10 -> 15, 9 -> 13 -> 19
])
def test_up_head_output_shape(num_convs: int, up_scale: float, kernel_size: int, size: tuple[int, int]) -> None:
    head = up_head(num_convs=num_convs, up_scale=up_scale, kernel_size=kernel_size).eval()
    assert len(head.up_convs) == num_convs
    assert head.up_convs[0][0].conv.kernel_size == (kernel_size, kernel_size)
    with torch.no_grad():
        assert head(feats()).shape == (2, 5, *size)


def test_up_head_keys() -> None:
    keys = set(up_head(num_convs=2).state_dict())
    assert {"norm.weight", "norm.bias", "up_convs.0.0.conv.weight", "up_convs.1.0.bn.running_var",
            "conv_seg.weight"} <= keys
    assert not any(k.startswith("up_convs.0.1") for k in keys)  # the Upsample holds nothing


def test_up_head_norm_normalizes_the_selected_input() -> None:
    head = up_head(num_convs=0, channels=16).eval()
    x = feats()
    with torch.no_grad():
        got = head.forward_features(x)
    assert torch.allclose(got, F.layer_norm(x[3].permute(0, 2, 3, 1), (16,), eps=1e-6).permute(0, 3, 1, 2),
                          atol=1e-5)


def test_up_head_trains() -> None:
    head = up_head(num_convs=2, kernel_size=3)
    labels = torch.randint(0, 5, (2, 29, 37))
    losses = head.loss(feats(), labels)
    assert set(losses) == {"loss_ce", "acc_seg"}
    losses["loss_ce"].backward()
    assert head.norm.weight.grad is not None and head.up_convs[0][0].conv.weight.grad is not None


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(kernel_size=5), ValueError, "kernel_size must be 1 or 3"),
    (dict(num_convs=-1), ValueError, "num_convs"),
    (dict(num_convs=0), ValueError, "must equal channels"),
    (dict(in_channels=[16, 16], in_index=[2, 3], input_transform="multiple_select"), TypeError, "one input"),
    (dict(norm_layer=dict(type="GN", num_groups=2)), ValueError, "'LN'"),
])
def test_up_head_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        up_head(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# SETRMLAHead and MLANeck
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("up_scale", "size"), [(4, (28, 36)), (3, (21, 27))])
def test_mla_head_output_shape(up_scale: int, size: tuple[int, int]) -> None:
    head = mla_head(up_scale=up_scale).eval()
    assert head.input_transform == "multiple_select"
    with torch.no_grad():
        assert head(feats()).shape == (2, 5, *size)
    assert {"up_convs.3.0.conv.weight", "up_convs.3.1.bn.bias"} <= set(head.state_dict())


def test_mla_head_concatenates_the_branches() -> None:
    head = mla_head(in_channels=(16, 16), in_index=(0, 2), channels=12).eval()
    x = feats()
    with torch.no_grad():
        got = head.forward_features(x)
        expected = torch.cat([head.up_convs[0](x[0]), head.up_convs[1](x[2])], dim=1)
    assert torch.equal(got, expected)


def test_mla_head_bad_arguments() -> None:
    with pytest.raises(ValueError, match="len\\(in_channels\\) \\* mla_channels"):
        mla_head(channels=16)
    with pytest.raises(TypeError):
        mla_head(input_transform="resize_concat")  # always multiple_select


def test_mla_neck_sums_top_down() -> None:
    neck = build("neck", dict(type="MLANeck", in_channels=[8, 6, 4], out_channels=5, norm_cfg=BN,
                              act_cfg=dict(type="ReLU"))).eval()
    x = feats((8, 6, 4), size=(5, 7))
    with torch.no_grad():
        got = neck(x)
        normed = [norm(t) for norm, t in zip(neck.norm, x, strict=True)]
        proj = [conv(t) for conv, t in zip(neck.mla.channel_proj, normed, strict=True)]
        expected = [neck.mla.feat_extract[0](proj[2]), neck.mla.feat_extract[1](proj[2] + proj[1]),
                    neck.mla.feat_extract[2](proj[2] + proj[1] + proj[0])]
    assert len(got) == 3 and all(g.shape == (2, 5, 5, 7) for g in got)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)
    assert {"norm.2.weight", "mla.channel_proj.0.conv.weight", "mla.feat_extract.2.bn.running_mean"} <= \
        set(neck.state_dict())


def test_mla_neck_bad_arguments() -> None:
    with pytest.raises(TypeError, match="list"):
        build("neck", dict(type="MLANeck", in_channels=8, out_channels=4))
    neck = build("neck", dict(type="MLANeck", in_channels=[4, 4], out_channels=4))
    with pytest.raises(ValueError, match="expects 2 inputs"):
        neck(feats((4,)))


# ---------------------------------------------------------------------------------------------------------
# The ViT-L zoo models, on the meta device (300M parameters each: shapes only)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SETR_CONFIGS, ids=[p.stem for p in SETR_CONFIGS])
def test_zoo_model_shapes_on_meta(path: Path) -> None:
    cfg = load_config(path)
    crop = cfg.model.test_cfg.crop_size
    with torch.device("meta"):
        model = build("segmentor", cfg.model.to_dict()).eval()
        with torch.no_grad():
            x = torch.empty(1, 3, *crop)
            features = model.extract_feat(x)
            logits = model.decode_head(features)
            out = model.encode_decode(x)
    num_classes = cfg.model.decode_head.num_classes
    grid = (crop[0] // 16, crop[1] // 16)
    assert model.backbone.out_channels == [1024] * 4
    assert out.shape == (1, num_classes, *crop)
    if "pup" in path.stem:
        assert logits.shape[-2:] == crop  # four x2 blocks: stride 16 -> 1
    else:
        assert logits.shape[-2:] == (grid[0] * 4, grid[1] * 4)
    if "mla" in path.stem:
        assert all(f.shape == (1, 256, *grid) for f in features)
    assert cfg.model.test_cfg.mode == "slide"
    assert sum(p.numel() for p in model.parameters()) > 300e6
