"""CGNet against MMSegmentation 1.2.2: the backbone (keys, features) and its zoo model end to end
(encode_decode, slide inference, class-weighted loss). CGNet accepts any input size (each stride-2 step
rounds up), so the inputs are odd-sized."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_features_equal,
    assert_loss_equal,
    assert_slide_equal,
    backbone_pair,
    zoo_pair,
)

import semseg

CONFIG_DIR = Path(semseg.__file__).parent / "configs" / "cgnet"
BN3 = dict(type="BN", eps=1e-3, requires_grad=True)
BACKBONES = {
    "small": dict(type="CGNet", num_channels=(8, 16, 32), num_blocks=(2, 3), dilations=(2, 4), reductions=(4, 8),
                  norm_cfg=BN3),
    "one-block-relu": dict(type="CGNet", num_channels=(6, 8, 16), num_blocks=(1, 1), dilations=(3, 5),
                           reductions=(2, 2), act_cfg=dict(type="ReLU"), norm_cfg=dict(type="BN")),
}
ZOO = ["cgnet_fcn_4xb8-60k_cityscapes-512x1024"]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_keys_and_features(name: str) -> None:
    oracle, ours = backbone_pair(BACKBONES[name])
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert_features_equal(got, expected, ours.out_channels, min_abs=1e-3)
    assert len(got) == 3


@pytest.fixture(scope="module", params=ZOO)
def pair(request, tmp_path_factory):
    return zoo_pair(CONFIG_DIR / f"{request.param}.py", tmp_path_factory.mktemp("ckpt"))


def test_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair)


def test_slide_inference(pair) -> None:
    # 2 x 2 windows that overlap unevenly and do not divide the image
    assert_slide_equal(*pair, size=(53, 71), crop=(40, 56), stride=(27, 31))


def test_class_weighted_loss(pair) -> None:
    # No ignored pixels: with class_weight, MMSegmentation 1.2.2 indexes the weights by every label and
    # raises an IndexError on 255 (cross_entropy_loss.py, its avg_factor); ours counts such pixels as 1.
    got = assert_loss_equal(*pair, ignore_rows=0)
    assert set(got) == {"decode.loss_ce", "decode.acc_seg"}
