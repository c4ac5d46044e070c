"""BiSeNetV2 against MMSegmentation 1.2.2: the backbone (keys, all five features) and the zoo model end to
end (encode_decode, whole inference as its test_cfg says, the losses of the decode head and the four
auxiliary heads). BiSeNetV2 accepts any input size, 1x1 included: every strided layer rounds up, so the
detail branch taken down 4x and the semantic branch meet at ceil(H / 32) x ceil(W / 32); the inputs are
odd-sized."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_features_equal,
    assert_loss_equal,
    backbone_pair,
    max_diff,
    oracle_inference,
    zoo_pair,
)

import semseg

TOL = 1e-4
CONFIG_DIR = Path(semseg.__file__).parent / "configs" / "bisenetv2"
SMALL = dict(detail_channels=(8, 8, 16), semantic_channels=(4, 8, 12, 16), semantic_expansion_ratio=2,
             bga_channels=16)
BACKBONES = {
    "zoo": dict(type="BiSeNetV2", detail_channels=(64, 64, 128), semantic_channels=(16, 32, 64, 128),
                semantic_expansion_ratio=6, bga_channels=128, out_indices=(0, 1, 2, 3, 4), init_cfg=None,
                align_corners=False),
    "small-aligned-picked": dict(type="BiSeNetV2", **SMALL, align_corners=True, out_indices=(4, 0, 2)),
    "two-detail-stages": dict(type="BiSeNetV2", detail_channels=(8, 16), semantic_channels=(4, 8, 16),
                              bga_channels=16, out_indices=(0, 1, 2, 3)),
}
ZOO = ["bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024"]
CASES = [("zoo", (75, 101)), ("small-aligned-picked", (75, 101)), ("small-aligned-picked", (13, 17)),
         ("two-detail-stages", (33, 47)), ("two-detail-stages", (1, 1))]


@pytest.mark.parametrize(("name", "size"), CASES)
def test_backbone_keys_and_features(name: str, size: tuple[int, int]) -> None:
    oracle, ours = backbone_pair(BACKBONES[name])
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert len(got) == len(BACKBONES[name]["out_indices"])
    assert_features_equal(got, expected, ours.out_channels, min_abs=1e-3)


@pytest.fixture(scope="module", params=ZOO)
def pair(request, tmp_path_factory):
    return zoo_pair(CONFIG_DIR / f"{request.param}.py", tmp_path_factory.mktemp("ckpt"))


def test_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair, size=(57, 83))


def test_whole_inference(pair) -> None:
    oracle, ours = pair
    assert ours.test_cfg["mode"] == "whole"
    x = torch.randn(2, 3, 45, 71, generator=torch.Generator().manual_seed(1))
    expected = oracle_inference(oracle, x)
    with torch.no_grad():
        got = ours.inference(x)
    assert expected.abs().max() > 1e-3
    assert max_diff(got, expected) < TOL


def test_loss(pair) -> None:
    got = assert_loss_equal(*pair, size=(49, 67))
    assert {"decode.loss_ce", *(f"aux_{i}.loss_ce" for i in range(4))} <= set(got)
