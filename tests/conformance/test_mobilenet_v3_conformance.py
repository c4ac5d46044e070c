"""MobileNetV3, LRASPPHead and the LR-ASPP zoo models against MMSegmentation 1.2.2: same keys, same
features, logits and losses.

MobileNetV3 takes any input size; even sizes matter as much as odd ones, since there its stride-2 convs pad
TensorFlow-style (0 before, 1 after). LRASPPHead needs its deepest input to be at least 49x49 (49 * 8 = 392
px images at output stride 8), so the zoo models are compared on 393x401 inputs and crops.
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
    head_pair,
    oracle_head_loss,
    require_oracle,
    zoo_pair,
)

TOL = 1e-4
BN3 = dict(type="BN", eps=0.001)
BACKBONES = {
    "large_zoo": dict(type="MobileNetV3", arch="large", out_indices=(1, 3, 16), norm_cfg=BN3),
    "small_zoo": dict(type="MobileNetV3", arch="small", out_indices=(0, 1, 12), norm_cfg=BN3),
    "small_all_r2": dict(type="MobileNetV3", arch="small", out_indices=tuple(range(13)), reduction_factor=2),
    "large_all_r4": dict(type="MobileNetV3", arch="large", out_indices=tuple(range(17)), reduction_factor=4,
                         norm_cfg=BN3),
}
CASES = [("large_zoo", (97, 131)), ("large_zoo", (64, 90)), ("small_zoo", (64, 90)), ("small_zoo", (33, 47)),
         ("small_all_r2", (50, 38)), ("large_all_r4", (45, 61))]


@pytest.mark.parametrize(("name", "size"), CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_backbone_same_keys_and_features(name: str, size: tuple[int, int]) -> None:
    oracle, ours = backbone_pair(BACKBONES[name])
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert_features_equal(got, expected, ours.out_channels, min_abs=1e-2)


def _head_cfg(**kwargs) -> dict:
    cfg = dict(type="LRASPPHead", in_channels=(8, 12, 24), in_index=(0, 1, 2), channels=16,
               input_transform="multiple_select", dropout_ratio=0.1, num_classes=5, norm_cfg=BN3,
               act_cfg=dict(type="ReLU"), align_corners=False)
    cfg.update(kwargs)
    return cfg


HEADS = {
    "zoo_like": _head_cfg(),
    "align_corners": _head_cfg(align_corners=True, branch_channels=(8, 4)),
}
# Strides 2, 4, 8 of a 425x401 image (MobileNetV3-large's layers 1, 3, 16); the deepest is >= 49x49.
FEAT_SIZES = ((213, 201), (107, 101), (54, 51))


def _feats(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, w, generator=gen) for c, (h, w) in zip((8, 12, 24), FEAT_SIZES, strict=True)]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(HEADS))
def test_lraspp_head_logits_and_loss(name: str) -> None:
    require_oracle()
    oracle, ours = head_pair(HEADS[name])
    oracle.eval()
    ours.eval()
    feats = _feats(3)
    with torch.no_grad():
        expected = oracle(feats)
        got = ours(feats)
    assert got.shape == expected.shape == (2, 5, *FEAT_SIZES[0])
    assert expected.abs().max() > 1e-2
    assert (got - expected).abs().max().item() < TOL

    labels = torch.randint(0, 5, (2, 425, 401), generator=torch.Generator().manual_seed(4))
    labels[:, :7] = 255
    for head in (oracle, ours):
        head.train()
        head.dropout.p = 0.0
    expected_loss = oracle_head_loss(oracle, feats, labels)
    got_loss = ours.loss(feats, labels)
    assert set(got_loss) == set(expected_loss)
    for key in expected_loss:
        assert abs(got_loss[key].item() - expected_loss[key].item()) < TOL, key


# Both arches: large reads layers 1, 3, 16; small layers 0, 1, 12. Large costs ~1 s a forward at this size on
# one core, so slide inference and the loss run on the small one only.
LARGE = "mobilenet-v3-d8_lraspp_4xb4-320k_cityscapes-512x1024"
SMALL = "mobilenet-v3-d8-scratch-s_lraspp_4xb4-320k_cityscapes-512x1024"
NAMES = [LARGE, SMALL]
SIZE = (393, 401)  # the smallest sizes the 49x49 image pool allows are 385 (ceil(385 / 8) = 49)


@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    return zoo_pair(request.param, tmp_path_factory.mktemp("ckpt"), method="mobilenet_v3")


def test_zoo_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair, size=SIZE)


@pytest.mark.parametrize("pair", [SMALL], indirect=True)
def test_zoo_slide_inference(pair) -> None:
    # 2 x 2 windows, the last ones clamped to the border
    assert_slide_equal(*pair, size=(405, 420), crop=SIZE, stride=(16, 23))


@pytest.mark.parametrize("pair", [SMALL], indirect=True)
def test_zoo_loss(pair) -> None:
    assert_loss_equal(*pair, size=SIZE, ignore_rows=9)


@pytest.mark.parametrize("pair", [SMALL], indirect=True)
def test_zoo_too_small_input_says_so(pair) -> None:
    _, ours = pair
    with pytest.raises(ValueError, match="392 px"), torch.no_grad():
        ours.encode_decode(torch.randn(1, 3, 383, 500))
