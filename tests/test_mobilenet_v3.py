"""MobileNetV3, its block, the SE layer, TF-'SAME' padding and LRASPPHead: shapes, options, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semseg.build import build
from semseg.nn.inverted_residual import InvertedResidualV3, pad_same
from semseg.nn.se_layer import SELayer


@pytest.mark.parametrize(("size", "kernel", "stride", "expected"), [
    (8, 3, 2, (0, 1)), (9, 3, 2, (1, 1)), (8, 5, 2, (1, 2)), (9, 5, 2, (2, 2)), (7, 3, 1, (1, 1)),
])
def test_pad_same_amounts(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    x = torch.arange(float(size)).view(1, 1, 1, size).expand(1, 1, size, size)
    padded = pad_same(x, kernel, stride)
    before, after = expected
    assert padded.shape[-1] == size + before + after and padded.shape[-2] == size + before + after
    assert torch.equal(padded[..., before:before + size, before:before + size], x)  # zeros around, input kept
    out = F.conv2d(padded, torch.ones(1, 1, kernel, kernel), stride=stride)
    assert out.shape[-2:] == (math.ceil(size / stride),) * 2


def test_se_layer_matches_reference() -> None:
    se = SELayer(16, ratio=4)
    x = torch.randn(2, 16, 13, 17)
    pooled = x.mean(dim=(2, 3), keepdim=True)
    hidden = F.relu(F.conv2d(pooled, se.conv1.conv.weight, se.conv1.conv.bias))
    gate = ((F.conv2d(hidden, se.conv2.conv.weight, se.conv2.conv.bias) + 3) / 6).clamp(0, 1)
    assert se.conv1.conv.out_channels == 8  # make_divisible(16 // 4, 8)
    assert torch.allclose(se(x), x * gate, atol=1e-6)
    with pytest.raises(ValueError, match="act_cfg"):
        SELayer(16, act_cfg=(dict(type="ReLU"),))


def test_inverted_residual_v3_shapes_and_errors() -> None:
    se_cfg = dict(channels=24, ratio=4)
    block = InvertedResidualV3(16, 16, 24, kernel_size=5, stride=1, dilation=2, se_cfg=se_cfg)
    assert block.with_res_shortcut and block.with_se
    assert block(torch.randn(2, 16, 13, 17)).shape == (2, 16, 13, 17)
    strided = InvertedResidualV3(16, 24, 16, stride=2, with_expand_conv=False)
    assert not hasattr(strided, "expand_conv")
    assert strided(torch.randn(2, 16, 13, 18)).shape == (2, 24, 7, 9)
    with pytest.raises(ValueError, match="mid_channels"):
        InvertedResidualV3(16, 16, 24, with_expand_conv=False)
    with pytest.raises(ValueError, match="stride"):
        InvertedResidualV3(16, 16, 24, stride=3)


@pytest.mark.parametrize(("kwargs", "channels", "strides"), [
    (dict(arch="small"), [16, 16, 576], [2, 4, 8]),
    (dict(arch="large", out_indices=(1, 3, 16)), [16, 24, 960], [2, 4, 8]),
    (dict(arch="small", out_indices=(2, 8, 11), reduction_factor=2), [24, 48, 48], [8, 8, 8]),
])
def test_backbone_channels_and_strides(kwargs: dict, channels: list[int], strides: list[int]) -> None:
    model = build("backbone", dict(type="MobileNetV3", **kwargs)).eval()
    assert model.out_channels == channels and model.out_strides == strides
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 64, 96))
        odd = model(torch.randn(2, 3, 13, 17))
    for f, c, s in zip(feats, channels, strides, strict=True):
        assert f.shape == (2, c, 64 // s, 96 // s)
    assert [f.shape[2:] for f in odd] == [(-(-13 // s), -(-17 // s)) for s in strides]


def test_backbone_dilates_after_output_stride_8() -> None:
    model = build("backbone", dict(type="MobileNetV3", arch="large"))
    assert model.layer7.depthwise_conv.conv.stride == (1, 1) and model.layer7.depthwise_conv.conv.dilation == (2, 2)
    assert model.layer13.depthwise_conv.conv.dilation == (4, 4) and model.layer12.depthwise_conv.conv.dilation == (2, 2)
    assert model.layer4.depthwise_conv.conv.stride == (2, 2)
    assert model.layer0.bn.eps == 1e-5  # the zoo's configs set eps=1e-3 through norm_cfg
    assert build("backbone", dict(type="MobileNetV3", norm_cfg=dict(type="BN", eps=1e-3))).layer0.bn.eps == 1e-3


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(arch="tiny"), KeyError, "arch"),
    (dict(reduction_factor=0), ValueError, "reduction_factor"),
    (dict(reduction_factor=1.5), ValueError, "reduction_factor"),
    (dict(out_indices=(13,)), ValueError, "out_indices"),
    (dict(arch="large", frozen_stages=17), ValueError, "frozen_stages"),
])
def test_backbone_argument_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build("backbone", dict(type="MobileNetV3", **kwargs))


def test_frozen_stages_and_norm_eval() -> None:
    model = build("backbone", dict(type="MobileNetV3", frozen_stages=1)).train()
    assert not any(p.requires_grad for n in ("layer0", "layer1") for p in getattr(model, n).parameters())
    assert not model.layer1.training and model.layer2.training
    assert all(p.requires_grad for p in model.layer2.parameters())
    model = build("backbone", dict(type="MobileNetV3", norm_eval=True)).train()
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _lraspp(**kwargs) -> torch.nn.Module:
    cfg = dict(type="LRASPPHead", in_channels=(4, 6, 8), in_index=(0, 1, 2), channels=8,
               input_transform="multiple_select", num_classes=3, norm_cfg=dict(type="BN", eps=0.001),
               act_cfg=dict(type="ReLU"), align_corners=False)
    cfg.update(kwargs)
    return build("head", cfg)


def test_lraspp_head_shapes() -> None:
    head = _lraspp(branch_channels=(4, 2)).eval()
    feats = [torch.randn(2, 4, 99, 101), torch.randn(2, 6, 50, 51), torch.randn(2, 8, 50, 51)]
    with torch.no_grad():
        assert head(feats).shape == (2, 3, 99, 101)
    labels = torch.randint(0, 3, (2, 197, 201))
    assert set(head.train().loss(feats, labels)) == {"loss_ce", "acc_seg"}


def test_lraspp_head_rejects_small_inputs_with_a_clear_error() -> None:
    head = _lraspp().eval()
    feats = [torch.randn(2, 4, 96, 100), torch.randn(2, 6, 48, 50), torch.randn(2, 8, 48, 50)]
    with pytest.raises(ValueError, match=r"49x49.*48x50.*392 px"), torch.no_grad():
        head(feats)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(input_transform="resize_concat"), ValueError, "multiple_select"),
    (dict(branch_channels=(32,)), ValueError, "branch_channels"),
    (dict(branch_channels=(32, 6.5)), TypeError, "branch_channels"),
])
def test_lraspp_head_argument_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _lraspp(**kwargs)
