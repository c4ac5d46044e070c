"""Building blocks: ConvModule names and order, norms, activations, depthwise-separable conv, resize."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from semseg.nn import (
    ConvModule,
    DepthwiseSeparableConvModule,
    PyramidPooling,
    add_norms,
    build_activation,
    build_norm,
    norm_name,
    resize,
)
from semseg.nn.activation import HSigmoid, HSwish


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("norm_cfg", "name", "layer_type"),
    [
        (dict(type="BN"), "bn", nn.BatchNorm2d),
        (dict(type="SyncBN"), "bn", nn.BatchNorm2d),
        (dict(type="GN", num_groups=2), "gn", nn.GroupNorm),
        (dict(type="IN"), "in", nn.InstanceNorm2d),
    ],
)
def test_conv_module_child_names_and_auto_bias(norm_cfg: dict, name: str, layer_type: type) -> None:
    block = ConvModule(4, 8, 3, padding=1, norm_cfg=norm_cfg)
    assert [n for n, _ in block.named_children()] == ["conv", name, "activate"]
    assert type(getattr(block, name)) is layer_type
    assert block.norm is getattr(block, name)
    assert block.conv.bias is None  # bias='auto': the norm's shift makes it redundant
    assert isinstance(block.activate, nn.ReLU)
    assert block(_x(2, 4, 5, 7)).shape == (2, 8, 5, 7)


def test_conv_module_without_norm_has_bias_and_explicit_bias_wins() -> None:
    plain = ConvModule(4, 8, 1)
    assert plain.conv.bias is not None and plain.norm is None
    assert [n for n, _ in plain.named_children()] == ["conv", "activate"]
    forced = ConvModule(4, 8, 1, bias=True, norm_cfg=dict(type="BN"))
    assert forced.conv.bias is not None
    assert "conv.bias" in forced.state_dict() and "bn.running_mean" in forced.state_dict()


def test_conv_module_keys_for_layer_norm() -> None:
    assert norm_name(dict(type="LN")) == "ln"
    name, layer = build_norm(dict(type="LN"), 6)
    assert name == "ln" and isinstance(layer, nn.LayerNorm) and layer.normalized_shape == (6,)


def test_norm_first_order_normalizes_input_channels() -> None:
    block = ConvModule(3, 8, 1, norm_cfg=dict(type="BN"), order=("norm", "conv", "act"))
    assert block.bn.num_features == 3
    block.eval()
    with torch.no_grad():
        block.bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        block.bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    x = _x(2, 3, 5, 5)
    expected = torch.relu(block.conv(block.bn(x)))
    assert torch.equal(block(x), expected)
    # the default order normalizes the conv's output instead
    assert ConvModule(3, 8, 1, norm_cfg=dict(type="BN")).bn.num_features == 8


def test_order_must_be_a_permutation() -> None:
    with pytest.raises(ValueError, match="permutation"):
        ConvModule(3, 8, 1, order=("conv", "act", "act"))


def test_act_none_has_no_activate() -> None:
    block = ConvModule(3, 4, 1, act_cfg=None)
    assert block.activate is None
    x = _x(1, 3, 4, 4)
    assert torch.equal(block(x), block.conv(x))
    assert (block(x) < 0).any()  # no ReLU clipped the output


@pytest.mark.parametrize(
    ("act_cfg", "layer_type", "reference"),
    [
        (dict(type="ReLU"), nn.ReLU, torch.relu),
        (dict(type="ReLU6"), nn.ReLU6, lambda t: t.clamp(0, 6)),
        (dict(type="LeakyReLU", negative_slope=0.2), nn.LeakyReLU, lambda t: torch.where(t > 0, t, 0.2 * t)),
        (dict(type="GELU"), nn.GELU, lambda t: 0.5 * t * (1 + torch.erf(t / 2**0.5))),
        (dict(type="HSwish"), HSwish, lambda t: t * (t + 3).clamp(0, 6) / 6),
        (dict(type="HSigmoid"), HSigmoid, lambda t: ((t + 3) / 6).clamp(0, 1)),
        (dict(type="PReLU"), nn.PReLU, lambda t: torch.where(t > 0, t, 0.25 * t)),
    ],
)
def test_activation_types(act_cfg: dict, layer_type: type, reference) -> None:
    layer = build_activation(act_cfg)
    assert type(layer) is layer_type
    x = torch.linspace(-8, 8, 161)  # covers both clamps of ReLU6 / HSigmoid / HSwish
    assert torch.allclose(layer(x.view(1, 1, 1, -1)).flatten(), reference(x), atol=1e-6)
    block = ConvModule(2, 3, 1, act_cfg=act_cfg)
    assert type(block.activate) is layer_type


def test_leaky_relu_slope_and_inplace_default() -> None:
    assert build_activation(dict(type="LeakyReLU", negative_slope=0.3)).negative_slope == 0.3
    assert build_activation(dict(type="LeakyReLU")).negative_slope == 0.01
    assert ConvModule(2, 3, 1).activate.inplace is True
    assert ConvModule(2, 3, 1, inplace=False).activate.inplace is False
    assert build_activation(None) is None


def test_hsigmoid_custom_arguments() -> None:
    layer = build_activation(dict(type="HSigmoid", bias=1.0, divisor=2.0))
    assert layer(torch.tensor([-3.0, 0.0, 0.5, 3.0])).tolist() == [0.0, 0.5, 0.75, 1.0]


def test_unknown_activation_names_the_type() -> None:
    with pytest.raises(KeyError, match="Mish2"):
        build_activation(dict(type="Mish2"))
    with pytest.raises(KeyError, match="Mish2"):
        ConvModule(2, 3, 1, act_cfg=dict(type="Mish2"))


def test_unknown_norm_names_the_type() -> None:
    with pytest.raises(KeyError, match="BatchNorm7"):
        ConvModule(2, 3, 1, norm_cfg=dict(type="BatchNorm7"))


def test_syncbn_without_process_group_is_batchnorm() -> None:
    name, layer = build_norm(dict(type="SyncBN", momentum=0.05, eps=1e-3), 5)
    assert name == "bn"
    assert type(layer) is nn.BatchNorm2d and not isinstance(layer, nn.SyncBatchNorm)
    assert layer.momentum == 0.05 and layer.eps == 1e-3
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def test_group_norm_needs_num_groups() -> None:
    with pytest.raises(KeyError, match="num_groups"):
        build_norm(dict(type="GN"), 8)
    _, layer = build_norm(dict(type="GN", num_groups=4), 8)
    assert layer.num_groups == 4 and layer.num_channels == 8


def test_requires_grad_false_freezes_norm() -> None:
    block = ConvModule(3, 4, 3, norm_cfg=dict(type="BN", requires_grad=False))
    assert not block.bn.weight.requires_grad and not block.bn.bias.requires_grad
    assert block.conv.weight.requires_grad
    block(_x(2, 3, 6, 6)).sum().backward()
    assert block.bn.weight.grad is None and block.conv.weight.grad is not None
    assert build_norm(dict(type="BN"), 4)[1].weight.requires_grad


def test_depthwise_separable_keys_and_groups() -> None:
    block = DepthwiseSeparableConvModule(4, 6, 3, padding=2, dilation=2, norm_cfg=dict(type="BN"))
    keys = set(block.state_dict())
    assert {"depthwise_conv.conv.weight", "depthwise_conv.bn.weight", "pointwise_conv.conv.weight",
            "pointwise_conv.bn.running_var"} <= keys
    assert "depthwise_conv.conv.bias" not in keys
    assert block.depthwise_conv.conv.groups == 4 and block.depthwise_conv.conv.weight.shape == (4, 1, 3, 3)
    assert block.pointwise_conv.conv.weight.shape == (6, 4, 1, 1)
    assert block(_x(2, 4, 9, 11)).shape == (2, 6, 9, 11)


def test_depthwise_separable_default_and_specific_configs() -> None:
    shared = DepthwiseSeparableConvModule(4, 6, 3, norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU6"))
    for part in (shared.depthwise_conv, shared.pointwise_conv):
        assert isinstance(part.bn, nn.BatchNorm2d) and isinstance(part.activate, nn.ReLU6)
    mixed = DepthwiseSeparableConvModule(4, 6, 3, norm_cfg=dict(type="BN"), dw_act_cfg=None,
                                         pw_norm_cfg=dict(type="GN", num_groups=3))
    assert mixed.depthwise_conv.activate is None and isinstance(mixed.depthwise_conv.bn, nn.BatchNorm2d)
    assert isinstance(mixed.pointwise_conv.gn, nn.GroupNorm) and isinstance(mixed.pointwise_conv.activate, nn.ReLU)
    with pytest.raises(ValueError, match="groups"):
        DepthwiseSeparableConvModule(4, 6, 3, groups=2)


def _warnings_of(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if "align_corners" in str(w.message)]


def test_resize_warns_for_misaligned_upsampling_only() -> None:
    x = _x(1, 2, 33, 33)
    assert _warnings_of(lambda: resize(x, size=(64, 64), mode="bilinear", align_corners=True))
    assert not _warnings_of(lambda: resize(x, size=(65, 65), mode="bilinear", align_corners=True))
    assert not _warnings_of(lambda: resize(x, size=(64, 64), mode="bilinear", align_corners=False))
    assert not _warnings_of(lambda: resize(x, size=(64, 64), mode="bilinear", align_corners=True, warning=False))
    assert not _warnings_of(lambda: resize(x, size=(17, 17), mode="bilinear", align_corners=True))
    # as in MMSegmentation, one aligned side is enough to stay quiet
    assert not _warnings_of(lambda: resize(x, size=(65, 64), mode="bilinear", align_corners=True))


def test_resize_matches_interpolate() -> None:
    x = _x(2, 3, 33, 21)
    out = resize(x, size=torch.Size([65, 41]), mode="bilinear", align_corners=True)
    assert out.shape == (2, 3, 65, 41)
    assert torch.equal(out, nn.functional.interpolate(x, (65, 41), mode="bilinear", align_corners=True))
    # aligned corners keep the corner values exactly
    assert torch.allclose(out[..., ::2, ::2], x, atol=1e-6)
    nearest = resize(x, size=(66, 42), mode="nearest", align_corners=False)  # align_corners dropped for nearest
    assert torch.equal(nearest[..., ::2, ::2], x)


def test_add_norms_numbers_the_norms_by_type() -> None:
    block = nn.Module()
    assert add_norms(block, dict(type="GN", num_groups=2), (4, 8)) == ("gn1", "gn2")
    assert isinstance(block.gn2, nn.GroupNorm) and block.gn2.num_channels == 8
    assert add_norms(nn.Module(), dict(type="SyncBN"), (3,)) == ("bn1",)


def test_pyramid_pooling_branches() -> None:
    ppm = PyramidPooling((1, 3), 4, 2, conv_cfg=None, norm_cfg=None, act_cfg=None, align_corners=False)
    assert sorted(ppm.state_dict()) == ["0.1.conv.bias", "0.1.conv.weight", "1.1.conv.bias", "1.1.conv.weight"]
    x = torch.randn(2, 4, 7, 9)
    outs = ppm(x)
    assert [o.shape for o in outs] == [(2, 2, 7, 9)] * 2
    # the 1x1 bin is the global mean, projected and broadcast to every position
    expected = ppm[0][1](x.mean(dim=(2, 3), keepdim=True))
    assert torch.allclose(outs[0], expected.expand_as(outs[0]), atol=1e-6)
