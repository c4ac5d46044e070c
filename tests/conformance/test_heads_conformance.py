"""Decode heads vs MMSegmentation 1.2.2: same state-dict keys, same logits with the oracle's random weights."""

from __future__ import annotations

import pytest
import torch
from oracle import head_pair

CHANNELS = (8, 16, 24, 32)
SIZES = ((25, 33), (13, 17), (7, 9), (4, 5))  # strides 4..32 of a 97x131 image
BN = dict(type="BN")
GN = dict(type="GN", num_groups=4)


def head_cfg(type_name: str, **kwargs) -> dict:
    cfg = dict(type=type_name, in_channels=32, in_index=3, channels=16, num_classes=5, norm_cfg=BN,
               align_corners=False)
    cfg.update(kwargs)
    return cfg


CASES = {
    "fcn_0_concat": head_cfg("FCNHead", channels=32, num_convs=0, concat_input=True),
    "fcn_0_no_concat": head_cfg("FCNHead", channels=32, num_convs=0, concat_input=False),
    "fcn_1_concat": head_cfg("FCNHead", num_convs=1, concat_input=True),
    "fcn_2_no_concat": head_cfg("FCNHead", num_convs=2, concat_input=False),
    "fcn_2_dilation6": head_cfg("FCNHead", num_convs=2, dilation=6, in_index=2, in_channels=24),
    "fcn_resize_concat_ac": head_cfg("FCNHead", num_convs=1, in_channels=list(CHANNELS), in_index=[0, 1, 2, 3],
                                     input_transform="resize_concat", align_corners=True),
    "psp": head_cfg("PSPHead"),
    "psp_ac_gn": head_cfg("PSPHead", align_corners=True, norm_cfg=GN),
    "aspp": head_cfg("ASPPHead", dilations=(1, 12, 24, 36)),
    "aspp_ac": head_cfg("ASPPHead", dilations=(1, 2, 3), align_corners=True),
    "sep_aspp": head_cfg("DepthwiseSeparableASPPHead", c1_in_channels=8, c1_channels=4, dilations=(1, 2, 3, 4)),
    "sep_aspp_ac": head_cfg("DepthwiseSeparableASPPHead", c1_in_channels=8, c1_channels=4, in_index=2,
                            in_channels=24, align_corners=True),
    "sep_aspp_no_c1": head_cfg("DepthwiseSeparableASPPHead", c1_in_channels=0, c1_channels=0),
    "uper": head_cfg("UPerHead", in_channels=list(CHANNELS), in_index=[0, 1, 2, 3]),
    "uper_ac": head_cfg("UPerHead", in_channels=list(CHANNELS), in_index=[0, 1, 2, 3], align_corners=True,
                        pool_scales=(1, 2, 3)),
    "uper_gn_subset": head_cfg("UPerHead", in_channels=[16, 24, 32], in_index=[1, 2, 3], norm_cfg=GN),
}


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(CASES))
def test_head_matches_oracle(name: str) -> None:
    oracle, ours = head_pair(CASES[name])
    oracle.eval()
    ours.eval()

    gen = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, c, h, w, generator=gen) for c, (h, w) in zip(CHANNELS, SIZES, strict=True)]
    with torch.no_grad():
        expected = oracle(feats)
        got = ours(feats)
    assert got.shape == expected.shape
    assert expected.abs().max() > 1e-2  # a comparison of near-zero logits would prove nothing
    assert (got - expected).abs().max().item() < 1e-4
