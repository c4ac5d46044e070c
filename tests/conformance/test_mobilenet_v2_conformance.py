"""MobileNetV2 and its zoo models against MMSegmentation 1.2.2: same keys, same features, logits and losses.

MobileNetV2 takes any input size (each stride-2 conv gives ceil(size / 2)); odd and even sizes are compared.
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
    zoo_pair,
)

D8 = dict(strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4))
BACKBONES = {
    "d8_zoo": dict(type="MobileNetV2", widen_factor=1.0, out_indices=(1, 2, 4, 6), **D8),
    "w0.5_d8_all": dict(type="MobileNetV2", widen_factor=0.5, out_indices=tuple(range(7)), **D8),
    "w0.75_gn_relu": dict(type="MobileNetV2", widen_factor=0.75, out_indices=(0, 3, 6),
                          norm_cfg=dict(type="GN", num_groups=4), act_cfg=dict(type="ReLU")),
}
# Odd and even sizes (every stride-2 conv rounds up).
CASES = [("d8_zoo", (97, 131)), ("d8_zoo", (64, 90)), ("w0.5_d8_all", (61, 45)), ("w0.75_gn_relu", (64, 90))]


@pytest.mark.parametrize(("name", "size"), CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_backbone_same_keys_and_features(name: str, size: tuple[int, int]) -> None:
    oracle, ours = backbone_pair(BACKBONES[name])
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert_features_equal(got, expected, ours.out_channels, min_abs=1e-2)


# One ADE20K model (align_corners False, 150 classes) and one Cityscapes model with the low-level branch.
NAMES = [
    "mobilenet-v2-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024",
    "mobilenet-v2-d8_pspnet_4xb4-160k_ade20k-512x512",
]
# Narrower heads (the backbone keeps its zoo width) keep each test fast; both sides get the same overrides.
HEAD_WIDTHS = {"model.decode_head.channels": 64, "model.auxiliary_head.channels": 32}


@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    return zoo_pair(request.param, tmp_path_factory.mktemp("ckpt"), HEAD_WIDTHS, method="mobilenet_v2")


def test_zoo_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair)


def test_zoo_slide_inference(pair) -> None:
    # windows overlap unevenly and do not divide the image
    assert_slide_equal(*pair, size=(61, 73), crop=(48, 56), stride=(27, 31))


def test_zoo_loss(pair) -> None:
    assert_loss_equal(*pair)
