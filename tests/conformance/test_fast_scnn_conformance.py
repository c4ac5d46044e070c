"""Fast-SCNN against MMSegmentation 1.2.2: the backbone (keys, features), DepthwiseSeparableFCNHead
(logits, loss) and the zoo model end to end (encode_decode, slide inference, the sigmoid losses of its
three heads). Fast-SCNN accepts any input size (strided convs round up; the fusion resizes the 1/32 branch
to the 1/8 one), so the inputs are odd-sized."""

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
    head_pair,
    max_diff,
    oracle_head_loss,
    require_oracle,
    zoo_pair,
)

import semseg

TOL = 1e-4
CONFIG_DIR = Path(semseg.__file__).parent / "configs" / "fastscnn"
SMALL = dict(downsample_dw_channels=(8, 12), global_in_channels=16, global_block_channels=(16, 24, 32),
             global_out_channels=32, higher_in_channels=16, lower_in_channels=32, fusion_out_channels=16)
BACKBONES = {
    "small": dict(type="FastSCNN", **SMALL),
    "small-aligned-dwact-stride1": dict(type="FastSCNN", **{**SMALL, "global_block_strides": (2, 1, 1)},
                                        align_corners=True, dw_act_cfg=dict(type="ReLU"), out_indices=(2, 0)),
}
ZOO = ["fast_scnn_8xb4-160k_cityscapes-512x1024"]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_keys_and_features(name: str) -> None:
    oracle, ours = backbone_pair(BACKBONES[name])
    x = torch.randn(2, 3, 75, 101, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert_features_equal(got, expected, ours.out_channels, min_abs=1e-3)
    assert len(got) == len(BACKBONES[name].get("out_indices", (0, 1, 2)))


HEADS = {
    "concat-dwact": dict(type="DepthwiseSeparableFCNHead", in_channels=12, channels=8, num_convs=2,
                         concat_input=True, dw_act_cfg=dict(type="ReLU"), num_classes=5, dropout_ratio=0.0,
                         norm_cfg=dict(type="BN", requires_grad=True)),
    "one-conv-sigmoid": dict(type="DepthwiseSeparableFCNHead", in_channels=12, channels=8, num_convs=1,
                             concat_input=False, kernel_size=5, num_classes=5, dropout_ratio=0.0,
                             norm_cfg=dict(type="BN", requires_grad=True),
                             loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=0.7)),
}


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("name", list(HEADS))
def test_sep_fcn_head(name: str, align_corners: bool) -> None:
    require_oracle()
    cfg = dict(HEADS[name], align_corners=align_corners)
    oracle, ours = head_pair(cfg)
    generator = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 12, 13, 17, generator=generator)]
    oracle.eval()
    ours.eval()
    with torch.no_grad():
        expected, got = oracle(feats), ours(feats)
    assert expected.abs().max() > 1e-3
    assert max_diff(got, expected) < TOL

    labels = torch.randint(0, 5, (2, 25, 33), generator=generator)
    labels[:, :3] = 255
    oracle.train()
    ours.train()
    expected_loss = oracle_head_loss(oracle, feats, labels)
    got_loss = ours.loss(feats, labels)
    assert set(got_loss) == set(expected_loss)
    for key in expected_loss:
        assert abs(got_loss[key].item() - expected_loss[key].item()) < TOL, key


@pytest.fixture(scope="module", params=ZOO)
def pair(request, tmp_path_factory):
    return zoo_pair(CONFIG_DIR / f"{request.param}.py", tmp_path_factory.mktemp("ckpt"))


def test_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair)


def test_slide_inference(pair) -> None:
    assert_slide_equal(*pair, size=(71, 97), crop=(48, 56), stride=(27, 31))


def test_loss(pair) -> None:
    got = assert_loss_equal(*pair)
    assert {"decode.loss_ce", "aux_0.loss_ce", "aux_1.loss_ce"} <= set(got)
