"""Semantic FPN against MMSegmentation 1.2.2: the FPN neck in every ``add_extra_convs`` form, the FPN head
(logits and loss), and a Semantic FPN zoo model end to end at reduced width."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_features_equal,
    assert_loss_equal,
    assert_slide_equal,
    build_oracle_module,
    head_pair,
    oracle_head_loss,
    randomize_,
    set_dropout_off,
    zoo_pair,
)

from semseg.build import build

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "semseg" / "configs"
CHANNELS = [8, 12, 16, 20]
SIZES = [(25, 33), (13, 17), (7, 9), (4, 5)]  # strides 4..32 of a 97x131 image
HALVING_SIZES = [(24, 32), (12, 16), (6, 8), (3, 4)]  # for upsample_cfg with scale_factor=2
BN = dict(type="BN")


def neck_cfg(**kwargs) -> dict:
    return dict(type="FPN", in_channels=CHANNELS, out_channels=6, num_outs=4) | kwargs


NECKS = {
    "default": neck_cfg(),
    "maxpool_extra": neck_cfg(num_outs=6),
    "true_on_output": neck_cfg(num_outs=6, add_extra_convs=True),
    "true_on_inputs_compat": neck_cfg(num_outs=5, add_extra_convs=True, extra_convs_on_inputs=True),
    "on_input": neck_cfg(num_outs=6, add_extra_convs="on_input"),
    "on_lateral": neck_cfg(num_outs=6, add_extra_convs="on_lateral"),
    "on_output_relu": neck_cfg(num_outs=7, add_extra_convs="on_output", relu_before_extra_convs=True),
    "start_end_level": neck_cfg(num_outs=2, start_level=1, end_level=3),
    "start_level_on_input": neck_cfg(num_outs=5, start_level=1, add_extra_convs="on_input"),
    "bn_relu": neck_cfg(num_outs=5, add_extra_convs="on_lateral", norm_cfg=BN, act_cfg=dict(type="ReLU")),
    "bn_no_norm_on_lateral": neck_cfg(norm_cfg=BN, no_norm_on_lateral=True, act_cfg=dict(type="ReLU")),
    "gn": neck_cfg(norm_cfg=dict(type="GN", num_groups=2)),
    "upsample_bilinear": neck_cfg(upsample_cfg=dict(mode="bilinear", align_corners=False)),
    "upsample_bilinear_ac": neck_cfg(upsample_cfg=dict(mode="bilinear", align_corners=True)),
    "upsample_scale_factor": neck_cfg(upsample_cfg=dict(scale_factor=2, mode="nearest")),
}


def neck_pair(cfg: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    oracle = randomize_(build_oracle_module(cfg), seed=1)
    ours = build("neck", copy.deepcopy(cfg))
    theirs = oracle.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    return oracle, ours


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(NECKS))
def test_fpn_neck_matches_oracle(name: str) -> None:
    cfg = NECKS[name]
    oracle, ours = neck_pair(cfg)
    sizes = HALVING_SIZES if "scale_factor" in cfg.get("upsample_cfg", {}) else SIZES
    gen = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, c, *hw, generator=gen) for c, hw in zip(CHANNELS, sizes, strict=True)]
    for train in (False, True):  # eval: running statistics; train: batch statistics
        oracle.train(train)
        ours.train(train)
        with torch.no_grad():
            expected = list(oracle(feats))
            got = ours(feats)
        assert_features_equal(got, expected, [6] * cfg["num_outs"])


def head_cfg(**kwargs) -> dict:
    cfg = dict(type="FPNHead", in_channels=CHANNELS, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32],
               channels=8, dropout_ratio=0.1, num_classes=5, norm_cfg=BN, align_corners=False)
    cfg.update(kwargs)
    return cfg


HEADS = {
    "strides_4_32": head_cfg(),
    "strides_4_32_ac": head_cfg(align_corners=True),
    "three_levels_gn": head_cfg(in_channels=CHANNELS[1:], in_index=[1, 2, 3], feature_strides=[8, 16, 32],
                                norm_cfg=dict(type="GN", num_groups=2)),
}


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(HEADS))
def test_fpn_head_matches_oracle(name: str) -> None:
    oracle, ours = head_pair(HEADS[name])
    gen = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, c, *hw, generator=gen) for c, hw in zip(CHANNELS, SIZES, strict=True)]
    oracle.eval()
    ours.eval()
    with torch.no_grad():
        expected = oracle(feats)
        got = ours(feats)
    assert got.shape == expected.shape == (2, 5, *SIZES[HEADS[name]["in_index"][0]])
    assert expected.abs().max() > 1e-2
    assert (got - expected).abs().max().item() < 1e-4

    oracle.train()
    ours.train()
    set_dropout_off(oracle)
    set_dropout_off(ours)
    labels = torch.randint(0, 5, (2, 97, 131), generator=gen)
    labels[:, :4] = 255
    expected_loss = oracle_head_loss(oracle, feats, labels)
    got_loss = ours.loss(feats, labels)
    assert set(got_loss) == set(expected_loss) == {"loss_ce", "acc_seg"}
    for key in expected_loss:
        assert abs(got_loss[key].item() - expected_loss[key].item()) < 1e-4, key


# Semantic FPN R-50 at reduced width: an 8-channel stem and base (stages of 32..256 channels), a 16-channel
# FPN and an 8-channel head.
NARROW = {
    "model.backbone.stem_channels": 8,
    "model.backbone.base_channels": 8,
    "model.neck.in_channels": [32, 64, 128, 256],
    "model.neck.out_channels": 16,
    "model.decode_head.in_channels": [16, 16, 16, 16],
    "model.decode_head.channels": 8,
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    path = CONFIG_ROOT / "sem_fpn" / "fpn_r50_4xb2-80k_cityscapes-512x1024.py"
    return zoo_pair(path, tmp_path_factory.mktemp("ckpt"), NARROW)


def test_zoo_encode_decode(pair):
    assert_encode_decode_equal(*pair, size=(57, 83))


def test_zoo_slide_inference(pair):
    # windows overlap unevenly and do not divide the image
    assert_slide_equal(*pair, size=(61, 75), crop=(40, 48), stride=(25, 29))


def test_zoo_loss(pair):
    assert_loss_equal(*pair, size=(49, 67))
