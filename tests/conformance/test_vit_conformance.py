"""Transformer blocks, VisionTransformer, MultiLevelNeck and the ViT / DeiT zoo models against MMSegmentation
1.2.2 (mmcv's MultiheadAttention / FFN / DropPath, mmseg's PatchEmbed): same keys, same outputs.

ViT takes any input size: sizes the patch does not divide are zero-padded ('corner' or 'same'), and the
position embedding is resized (bicubic by default) whenever the token count differs from the training grid's.
"""

from __future__ import annotations

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_features_equal,
    assert_loss_equal,
    assert_slide_equal,
    backbone_pair,
    build_oracle_module,
    max_diff,
    randomize_,
    require_oracle,
    zoo_pair,
)
from torch import nn

from semseg.build import build
from semseg.nn.transformer import FFN, DropPath, MultiheadAttention, PatchEmbed

TOL = 1e-4


def _pair_of(oracle: nn.Module, ours: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Load the oracle's state into ours (same keys and shapes asserted, strict); both in eval mode."""
    theirs = oracle.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    oracle.eval()  # MMSegmentation's backbones return None from train()
    return oracle, ours.eval()


def _randomize_all_(module: nn.Module, seed: int) -> None:
    """Every parameter redrawn from N(0, 0.3): zero-initialised biases would hide a misplaced one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("bias", [True, False])
def test_multihead_attention_matches_mmcv(bias: bool) -> None:
    require_oracle()
    from mmcv.cnn.bricks.transformer import MultiheadAttention as OracleMHA

    oracle = OracleMHA(embed_dims=32, num_heads=4, batch_first=True, bias=bias)
    _randomize_all_(oracle, seed=0)
    oracle, ours = _pair_of(oracle, MultiheadAttention(32, 4, bias=bias))
    x, identity = (torch.randn(2, 23, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    with torch.no_grad():
        assert max_diff(ours(x, identity=identity), oracle(x, identity=identity)) < 1e-5
        key = torch.randn(2, 9, 32)
        assert max_diff(ours(x, key=key, value=key), oracle(x, key=key, value=key)) < 1e-5


@pytest.mark.parametrize("num_fcs", [2, 3])
def test_ffn_matches_mmcv(num_fcs: int) -> None:
    require_oracle()
    from mmcv.cnn.bricks.transformer import FFN as OracleFFN

    act_cfg = dict(type="GELU")
    oracle = OracleFFN(embed_dims=16, feedforward_channels=40, num_fcs=num_fcs, act_cfg=act_cfg)
    _randomize_all_(oracle, seed=0)
    oracle, ours = _pair_of(oracle, FFN(16, 40, num_fcs=num_fcs, act_cfg=act_cfg))
    x = torch.randn(2, 23, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_diff(ours(x), oracle(x)) < 1e-5


def test_drop_path_matches_mmcv_in_training() -> None:
    require_oracle()
    from mmcv.cnn.bricks.drop import DropPath as OracleDropPath

    x = torch.randn(16, 7, 5)
    torch.manual_seed(3)
    expected = OracleDropPath(0.3).train()(x)
    torch.manual_seed(3)
    assert torch.equal(DropPath(0.3).train()(x), expected)


@pytest.mark.parametrize(("padding", "norm"), [("corner", True), ("same", False), (2, False)])
def test_patch_embed_matches_mmseg(padding: str | int, norm: bool) -> None:
    require_oracle()
    from mmseg.models.utils import PatchEmbed as OraclePatchEmbed

    norm_cfg = dict(type="LN") if norm else None
    oracle = OraclePatchEmbed(in_channels=3, embed_dims=8, kernel_size=5, stride=4, padding=padding,
                              norm_cfg=norm_cfg)
    _randomize_all_(oracle, seed=0)
    oracle, ours = _pair_of(oracle, PatchEmbed(3, 8, kernel_size=5, stride=4, padding=padding, norm_cfg=norm_cfg))
    x = torch.randn(2, 3, 29, 18, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (got, got_hw), (expected, expected_hw) = ours(x), oracle(x)
    assert got_hw == expected_hw
    assert max_diff(got, expected) < 1e-5


# Small ViTs (32 wide, 2 heads, 3 layers, 8x8 patches, a 40x48 training grid) covering the options.
VIT = dict(type="VisionTransformer", img_size=(40, 48), patch_size=8, embed_dims=32, num_layers=3, num_heads=2,
           norm_cfg=dict(type="LN", eps=1e-6))
BACKBONES = {
    "zoo_like": dict(VIT, out_indices=(0, 1, 2), drop_path_rate=0.1),
    "final_norm_origin": dict(VIT, out_indices=(1, 2), final_norm=True, out_origin=True),
    "no_cls_token": dict(VIT, out_indices=(0, 2), with_cls_token=False, final_norm=True),
    "pre_norm_patch_norm": dict(VIT, out_indices=-1, pre_norm=True, patch_norm=True, patch_bias=True,
                                qkv_bias=False, num_fcs=3, mlp_ratio=2),
    "same_pad_bilinear": dict(VIT, out_indices=(0, 2), patch_pad="same", interpolate_mode="bilinear",
                              act_cfg=dict(type="ReLU")),
}
# Training size (no resize), odd sizes (padding and a resized position embedding), a transposed grid.
CASES = [("zoo_like", (40, 48)), ("zoo_like", (61, 45)), ("final_norm_origin", (37, 53)),
         ("no_cls_token", (29, 71)), ("pre_norm_patch_norm", (45, 33)), ("same_pad_bilinear", (61, 45)),
         ("final_norm_origin", (48, 40))]


def _vit_pair(name: str) -> tuple[nn.Module, nn.Module]:
    """backbone_pair, with the oracle's zero-initialised cls_token / pos_embed / biases made random too."""
    oracle, ours = backbone_pair(BACKBONES[name])
    _randomize_all_(oracle, seed=5)
    randomize_(oracle, seed=6)
    return _pair_of(oracle, ours)


@pytest.mark.parametrize(("name", "size"), CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_backbone_same_keys_and_features(name: str, size: tuple[int, int]) -> None:
    oracle, ours = _vit_pair(name)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert_features_equal(got, list(expected), ours.out_channels, min_abs=1e-2, tol=TOL)


def test_backbone_output_cls_token_matches() -> None:
    require_oracle()
    cfg = dict(VIT, out_indices=(0, 2), output_cls_token=True, out_origin=True)
    oracle, ours = backbone_pair(cfg)
    _randomize_all_(oracle, seed=5)
    oracle, ours = _pair_of(oracle, ours)
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert len(got) == len(expected) == 3
    for (g_map, g_cls), (e_map, e_cls) in zip(got, expected, strict=True):
        assert max_diff(g_map, e_map) < TOL and max_diff(g_cls, e_cls) < TOL


def test_backbone_train_mode_without_dropout_matches() -> None:
    oracle, ours = _vit_pair("final_norm_origin")
    oracle.train(), ours.train()
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(2))
    expected, got = oracle(x), ours(x)
    assert_features_equal(got, list(expected), ours.out_channels, min_abs=1e-2, tol=TOL)


@pytest.mark.parametrize(("in_channels", "scales", "norm"), [
    ([16, 16, 16, 16], [4, 2, 1, 0.5], False), ([16], [0.5, 1, 2], True)])
def test_multilevel_neck_matches(in_channels: list[int], scales: list[float], norm: bool) -> None:
    require_oracle()
    cfg = dict(type="MultiLevelNeck", in_channels=in_channels, out_channels=8, scales=scales)
    if norm:
        cfg.update(norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU"))
    torch.manual_seed(0)
    oracle = build_oracle_module(cfg)
    oracle.init_weights()
    _randomize_all_(oracle, seed=1)
    randomize_(oracle, seed=2)
    oracle, ours = _pair_of(oracle, build("neck", dict(cfg)))
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, c, 7, 9, generator=gen) for c in in_channels]
    with torch.no_grad():
        expected, got = oracle(inputs), ours(inputs)
    assert_features_equal(got, list(expected), [8] * len(scales), tol=TOL)


# One ViT model with MultiLevelNeck and one DeiT model without a neck (DeiT-S: drop path on), 32 wide,
# 4 layers; the 512x512 position grid is resized for every input here.
SMALL = {
    "model.backbone.embed_dims": 32, "model.backbone.num_heads": 2, "model.backbone.num_layers": 4,
    "model.backbone.out_indices": (0, 1, 2, 3),
    "model.decode_head.in_channels": [32, 32, 32, 32], "model.decode_head.channels": 32,
    "model.auxiliary_head.in_channels": 32, "model.auxiliary_head.channels": 16,
}
NAMES = {
    "vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512": {
        **SMALL, "model.neck.in_channels": [32, 32, 32, 32], "model.neck.out_channels": 32},
    "vit_deit-s16_upernet_8xb2-80k_ade20k-512x512": SMALL,
}


@pytest.fixture(scope="module", params=list(NAMES))
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights (cls_token, pos_embed included)."""
    oracle, ours = zoo_pair(request.param, tmp_path_factory.mktemp("ckpt"), NAMES[request.param], method="vit")
    _randomize_all_(oracle.backbone, seed=7)
    randomize_(oracle.backbone, seed=8)
    ours.backbone.load_state_dict(oracle.backbone.state_dict(), strict=True)
    return oracle, ours


def _drop_path_off(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0


def test_zoo_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair)


def test_zoo_slide_inference(pair) -> None:
    # windows overlap unevenly and do not divide the image; 16x16 patches do not divide the windows
    assert_slide_equal(*pair, size=(61, 73), crop=(40, 56), stride=(27, 31))


def test_zoo_loss(pair) -> None:
    for model in pair:
        _drop_path_off(model)
    assert_loss_equal(*pair)
