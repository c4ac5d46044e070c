"""SwinTransformer and the Swin UPerNet zoo models against MMSegmentation 1.2.2: same keys (the
relative_position_index buffers included), same features, logits and losses.

Swin takes any input size: the patch embedding and each patch merging zero-pad the bottom/right, and every
attention layer pads its map to a multiple of the window (padded tokens take part in unshifted windows).
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
from semseg.models.backbones.swin import PatchMerging, WindowMSA, shifted_window_mask

TOL = 1e-4


def _randomize_swin_(model: nn.Module, seed: int) -> None:
    """Linear weights ~ N(0, 1 / fan_in), Linear biases ~ N(0, 0.1), bias tables ~ N(0, 1) (the oracle leaves
    them at zero): every bias-table row, projection and merging order then shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=gen))


def _pair(oracle: nn.Module, ours: nn.Module) -> tuple[nn.Module, nn.Module]:
    theirs = oracle.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    oracle.eval()
    return oracle, ours.eval()


@pytest.mark.parametrize("masked", [False, True])
def test_window_msa_matches(masked: bool) -> None:
    require_oracle()
    from mmseg.models.backbones.swin import WindowMSA as OracleWindowMSA

    torch.manual_seed(0)
    oracle = OracleWindowMSA(32, 4, (7, 7))
    _randomize_swin_(oracle, seed=1)
    oracle, ours = _pair(oracle, WindowMSA(32, 4, (7, 7)))
    x = torch.randn(2, 6, 49, 32, generator=torch.Generator().manual_seed(2))
    mask = shifted_window_mask((14, 21), 7, 3) if masked else None
    with torch.no_grad():
        expected = oracle(x.flatten(0, 1), mask).unflatten(0, (2, 6))
        assert max_diff(ours(x, mask), expected) < 1e-5  # scaled_dot_product_attention vs the explicit softmax


@pytest.mark.parametrize(("hw", "stride"), [((7, 9), 2), ((8, 5), 2), ((7, 9), 3)])
def test_patch_merging_matches(hw: tuple[int, int], stride: int) -> None:
    require_oracle()
    from mmseg.models.utils.embed import PatchMerging as OraclePatchMerging

    torch.manual_seed(0)
    oracle = randomize_(OraclePatchMerging(in_channels=6, out_channels=10, stride=stride), seed=1)
    _randomize_swin_(oracle, seed=2)
    oracle, ours = _pair(oracle, PatchMerging(6, 10, stride=stride))
    x = torch.randn(2, hw[0] * hw[1], 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        (got, got_hw), (expected, expected_hw) = ours(x, hw), oracle(x, hw)
    assert got_hw == expected_hw
    assert max_diff(got, expected) < 1e-5


SWIN = dict(type="SwinTransformer", embed_dims=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), drop_path_rate=0.1)
BACKBONES = {
    "w7": dict(SWIN, window_size=7),
    "w12": dict(SWIN, window_size=12, pretrain_img_size=384),
    # three blocks in a stage (unshifted, shifted, unshifted), outputs of two stages, no norms in the patch
    # embedding / mergings, no q/k/v bias, an explicit q/k scale
    "options": dict(SWIN, window_size=7, depths=(3, 1, 2, 1), out_indices=(1, 3), patch_norm=False, qkv_bias=False,
                    qk_scale=0.3, mlp_ratio=2),
    "patch2_abs_pos": dict(SWIN, window_size=5, patch_size=2, strides=(2, 2, 2, 2), depths=(2, 2, 1, 1),
                           use_abs_pos_embed=True, pretrain_img_size=(38, 26), act_cfg=dict(type="ReLU")),
}
CASES = [("w7", (61, 45)), ("w7", (64, 96)), ("w7", (29, 33)), ("w12", (61, 45)), ("w12", (37, 53)),
         ("options", (53, 37)), ("patch2_abs_pos", (37, 25))]


def _swin_pair(name: str) -> tuple[nn.Module, nn.Module]:
    oracle, ours = backbone_pair(BACKBONES[name])
    _randomize_swin_(oracle, seed=5)
    return _pair(oracle, ours)


@pytest.mark.parametrize(("name", "size"), CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_backbone_same_keys_and_features(name: str, size: tuple[int, int]) -> None:
    oracle, ours = _swin_pair(name)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert_features_equal(got, list(expected), ours.out_channels, min_abs=1e-2, tol=TOL)


def test_backbone_train_mode_and_gradients_match() -> None:
    oracle, ours = _swin_pair("w7")
    for model in (oracle, ours):
        model.train()
        for m in model.modules():
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
    x = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(2))
    expected, got = oracle(x), ours(x)
    assert_features_equal(got, list(expected), ours.out_channels, min_abs=1e-2, tol=TOL)
    for outs in (expected, got):
        sum((o * torch.linspace(-1, 1, o.shape[-1])).sum() for o in outs).backward()
    theirs = dict(oracle.named_parameters())
    for name, p in ours.named_parameters():
        assert max_diff(p.grad, theirs[name].grad) < 1e-3 * max(1.0, theirs[name].grad.abs().max().item()), name


@pytest.mark.parametrize("frozen_stages", [0, 2])
def test_frozen_stages_match(frozen_stages: int) -> None:
    require_oracle()
    cfg = dict(SWIN, window_size=7, frozen_stages=frozen_stages, out_indices=(1, 2, 3), use_abs_pos_embed=True)
    oracle = build_oracle_module(cfg)
    ours = build("backbone", dict(cfg))
    oracle.train()
    ours.train()
    assert {n for n, p in ours.named_parameters() if not p.requires_grad} == \
        {n for n, p in oracle.named_parameters() if not p.requires_grad}
    theirs = dict(oracle.named_modules())  # module trees differ only in parameter-free dropout/padding modules
    assert all(m.training == theirs[n].training for n, m in ours.named_modules() if n in theirs)
    assert any(not m.training for m in ours.modules())


# Swin-T (window 7) and Swin-B (window 12, ImageNet-22k), 32 wide, two blocks per stage.
SMALL = {
    "model.backbone.embed_dims": 32, "model.backbone.depths": [2, 2, 2, 2], "model.backbone.num_heads": [2, 2, 4, 4],
    "model.decode_head.in_channels": [32, 64, 128, 256], "model.decode_head.channels": 32,
    "model.auxiliary_head.in_channels": 128, "model.auxiliary_head.channels": 16,
}
NAMES = ["swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512",
         "swin-base-patch4-window12-in22k-384x384-pre_upernet_8xb2-160k_ade20k-512x512"]


@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights (bias tables included)."""
    oracle, ours = zoo_pair(request.param, tmp_path_factory.mktemp("ckpt"), SMALL, method="swin")
    _randomize_swin_(oracle.backbone, seed=7)
    ours.backbone.load_state_dict(oracle.backbone.state_dict(), strict=True)
    return oracle, ours


def test_zoo_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair)


def test_zoo_slide_inference(pair) -> None:
    # windows overlap unevenly and do not divide the image; neither 4 nor the attention window divides them
    assert_slide_equal(*pair, size=(61, 73), crop=(40, 54), stride=(27, 31))


def test_zoo_loss(pair) -> None:
    for model in pair:  # stochastic depth off (drop_path_rate 0.3 in these configs)
        for m in model.modules():
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
    assert_loss_equal(*pair)
