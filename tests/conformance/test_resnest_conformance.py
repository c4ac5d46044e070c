"""ResNeSt against MMSegmentation 1.2.2: the backbone (keys, features) and two zoo models end to end.

The backbone accepts any input size (every downsampling rounds up, as the oracle's), so the inputs are odd.
The zoo models run at reduced width (ResNeSt-50, 16 base channels, narrow heads) through the same
``cfg_options`` on both sides; their configs are otherwise the zoo's.
"""

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

CONFIG_DIR = Path(semseg.__file__).parent / "configs" / "resnest"
SMALL = dict(stem_channels=32, base_channels=16)
D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True)
BACKBONES = {
    "s50-d8": dict(type="ResNeSt", depth=50, radix=2, reduction_factor=4, avg_down_stride=True, **SMALL, **D8),
    "s50-radix4-groups2-caffe": dict(type="ResNeSt", depth=50, radix=4, groups=2, reduction_factor=2,
                                     style="caffe", out_indices=(1, 3), **SMALL),
    "s50-radix1-groups2-gn-no-avd": dict(type="ResNeSt", depth=50, radix=1, groups=2, base_width=8,
                                         avg_down_stride=False, norm_cfg=dict(type="GN", num_groups=4), **SMALL),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_same_keys_and_features(name: str) -> None:
    oracle, ours = backbone_pair(BACKBONES[name])

    x = torch.randn(2, 3, 61, 83, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert_features_equal(got, expected, ours.out_channels, min_abs=1e-2)


# Zoo models at reduced width: the same options on both sides (dotted keys as --cfg-options).
NARROW_BACKBONE = {"model.backbone.depth": 50, "model.backbone.stem_channels": 32,
                   "model.backbone.base_channels": 16, "model.auxiliary_head.in_channels": 256,
                   "model.auxiliary_head.channels": 16}
ZOO = {
    "resnest_s101-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024": {
        **NARROW_BACKBONE, "model.decode_head.in_channels": 512, "model.decode_head.channels": 32,
        "model.decode_head.c1_in_channels": 64, "model.decode_head.c1_channels": 12},
    "resnest_s101-d8_pspnet_4xb4-160k_ade20k-512x512": {
        **NARROW_BACKBONE, "model.decode_head.in_channels": 512, "model.decode_head.channels": 32},
}

@pytest.fixture(scope="module", params=list(ZOO))
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) of a narrowed zoo config, same random weights and norm statistics."""
    name = request.param
    oracle, ours = zoo_pair(CONFIG_DIR / f"{name}.py", tmp_path_factory.mktemp("ckpt"), ZOO[name])
    assert type(ours.backbone).__name__ == "ResNeSt"
    return name, oracle, ours


def test_zoo_encode_decode(pair):
    assert_encode_decode_equal(*pair[1:])


def test_zoo_slide_inference(pair):
    # windows overlap unevenly and do not divide the image
    assert_slide_equal(*pair[1:], size=(71, 97), crop=(48, 56), stride=(27, 31))


def test_zoo_loss(pair):
    assert_loss_equal(*pair[1:])
