"""Decode heads on small random multi-level features: shapes, key names, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.nn import ConvModule, DepthwiseSeparableConvModule

NUM_CLASSES = 5
CHANNELS = (16, 32, 64, 128)  # strides 4, 8, 16, 32 of a 64x64 image


@pytest.fixture
def feats() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, c, 64 // s, 64 // s, generator=gen) for c, s in zip(CHANNELS, (4, 8, 16, 32),
                                                                                strict=True)]


def head_cfg(type_name: str, **kwargs) -> dict:
    cfg = dict(type=type_name, in_channels=128, in_index=3, channels=8, num_classes=NUM_CLASSES,
               norm_cfg=dict(type="BN"))
    cfg.update(kwargs)
    return cfg


CASES = {
    "fcn": (head_cfg("FCNHead"), 2),
    "fcn_dilated_no_concat": (head_cfg("FCNHead", num_convs=1, concat_input=False, dilation=6), 2),
    "psp": (head_cfg("PSPHead"), 2),
    "aspp": (head_cfg("ASPPHead", dilations=(1, 12, 24, 36)), 2),
    "sep_aspp": (head_cfg("DepthwiseSeparableASPPHead", c1_in_channels=16, c1_channels=4), 16),
    "sep_aspp_no_c1": (head_cfg("DepthwiseSeparableASPPHead", c1_in_channels=0, c1_channels=0), 2),
    "uper": (head_cfg("UPerHead", in_channels=list(CHANNELS), in_index=[0, 1, 2, 3]), 16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_shape_and_gradients(name: str, feats: list[torch.Tensor]) -> None:
    cfg, size = CASES[name]
    head = build("head", cfg)
    out = head(feats)
    assert out.shape == (2, NUM_CLASSES, size, size)
    out.square().mean().backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_fcn_num_convs_zero_is_identity(feats: list[torch.Tensor]) -> None:
    head = build("head", head_cfg("FCNHead", channels=128, num_convs=0))
    assert isinstance(head.convs, nn.Identity)
    assert not any(k.startswith("convs.") for k in head.state_dict())
    assert head.conv_cat.conv.in_channels == 256
    assert head(feats).shape == (2, NUM_CLASSES, 2, 2)
    no_concat = build("head", head_cfg("FCNHead", channels=128, num_convs=0, concat_input=False))
    assert torch.equal(no_concat.forward_features(feats), feats[3])


def test_fcn_num_convs_zero_needs_matching_channels() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        build("head", head_cfg("FCNHead", channels=8, num_convs=0))


def test_fcn_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_convs"):
        build("head", head_cfg("FCNHead", num_convs=-1))
    with pytest.raises(ValueError, match="dilation"):
        build("head", head_cfg("FCNHead", dilation=0))


def test_fcn_dilation_and_kernel_size() -> None:
    head = build("head", head_cfg("FCNHead", num_convs=2, dilation=6, kernel_size=3))
    for block in head.convs:
        assert block.conv.dilation == (6, 6) and block.conv.padding == (6, 6)
    assert head.conv_cat.conv.dilation == (1, 1) and head.conv_cat.conv.padding == (1, 1)
    head = build("head", head_cfg("FCNHead", num_convs=1, kernel_size=1))
    assert head.convs[0].conv.kernel_size == (1, 1) and head.convs[0].conv.padding == (0, 0)


def test_resize_concat(feats: list[torch.Tensor]) -> None:
    head = build("head", head_cfg("FCNHead", in_channels=list(CHANNELS), in_index=[0, 1, 2, 3],
                                  input_transform="resize_concat"))
    assert head.in_channels == sum(CHANNELS)
    assert head.convs[0].conv.in_channels == sum(CHANNELS)
    assert head(feats).shape == (2, NUM_CLASSES, 16, 16)


def test_multiple_select(feats: list[torch.Tensor]) -> None:
    head = build("head", head_cfg("UPerHead", in_channels=[32, 64, 128], in_index=[1, 2, 3]))
    assert head.input_transform == "multiple_select"
    selected = head.transform_inputs(feats)
    assert [x.shape[1] for x in selected] == [32, 64, 128]
    assert len(head.lateral_convs) == 2 and head.fpn_bottleneck.conv.in_channels == 3 * 8
    assert head(feats).shape == (2, NUM_CLASSES, 8, 8)


def test_uper_rejects_other_input_transform() -> None:
    with pytest.raises(ValueError, match="multiple_select"):
        build("head", head_cfg("UPerHead", in_channels=list(CHANNELS), in_index=[0, 1, 2, 3],
                               input_transform="resize_concat"))


def test_out_channels_one_defaults_threshold(feats: list[torch.Tensor]) -> None:
    with pytest.warns(UserWarning, match="threshold"):
        head = build("head", head_cfg("PSPHead", num_classes=2, out_channels=1))
    assert head.threshold == 0.3
    assert head(feats).shape == (2, 1, 2, 2)


def test_sep_aspp_reads_first_input_for_c1(feats: list[torch.Tensor]) -> None:
    head = build("head", head_cfg("DepthwiseSeparableASPPHead", c1_in_channels=16, c1_channels=4)).eval()
    out = head(feats)
    changed = [x.clone() for x in feats]
    changed[0] = changed[0] + 1.0
    assert not torch.allclose(head(changed), out)
    changed = [x.clone() for x in feats]
    changed[1] = changed[1] + 1.0  # neither the ASPP input (index 3) nor the low-level one
    assert torch.equal(head(changed), out)


def test_sep_aspp_branch_types() -> None:
    head = build("head", head_cfg("DepthwiseSeparableASPPHead", c1_in_channels=16, c1_channels=4))
    assert isinstance(head.aspp_modules[0], ConvModule)
    assert all(isinstance(m, DepthwiseSeparableConvModule) for m in head.aspp_modules[1:])
    assert head.aspp_modules[2].depthwise_conv.conv.dilation == (12, 12)
    assert head.sep_bottleneck[0].depthwise_conv.conv.in_channels == 8 + 4


EXPECTED_KEYS = {
    "fcn": ["convs.0.conv.weight", "convs.1.bn.running_mean", "conv_cat.conv.weight", "conv_cat.bn.weight",
            "conv_seg.weight", "conv_seg.bias"],
    "psp": ["psp_modules.0.1.conv.weight", "psp_modules.3.1.bn.running_var", "bottleneck.conv.weight",
            "bottleneck.bn.bias"],
    "aspp": ["image_pool.1.conv.weight", "image_pool.1.bn.weight", "aspp_modules.0.conv.weight",
             "aspp_modules.3.conv.weight", "bottleneck.conv.weight"],
    "sep_aspp": ["image_pool.1.conv.weight", "aspp_modules.0.conv.weight",
                 "aspp_modules.1.depthwise_conv.conv.weight", "aspp_modules.1.pointwise_conv.bn.weight",
                 "bottleneck.conv.weight", "c1_bottleneck.conv.weight",
                 "sep_bottleneck.0.depthwise_conv.conv.weight", "sep_bottleneck.1.pointwise_conv.bn.bias"],
    "uper": ["psp_modules.0.1.conv.weight", "bottleneck.conv.weight", "lateral_convs.0.conv.weight",
             "lateral_convs.2.bn.weight", "fpn_convs.0.conv.weight", "fpn_convs.2.bn.bias",
             "fpn_bottleneck.conv.weight"],
}


@pytest.mark.parametrize("name", list(EXPECTED_KEYS))
def test_key_names(name: str) -> None:
    keys = set(build("head", CASES[name][0]).state_dict())
    missing = [k for k in EXPECTED_KEYS[name] if k not in keys]
    assert missing == []
    assert not any("conv.bias" in k for k in keys if not k.startswith("conv_seg"))  # BN heads: no conv bias


def test_gn_keys() -> None:
    head = build("head", head_cfg("PSPHead", norm_cfg=dict(type="GN", num_groups=4)))
    keys = set(head.state_dict())
    assert "bottleneck.gn.weight" in keys and "psp_modules.0.1.gn.bias" in keys
    assert not any(".bn." in k for k in keys)
