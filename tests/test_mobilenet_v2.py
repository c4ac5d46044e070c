"""MobileNetV2, its inverted residual block and the channel rounding: shapes, strides, options, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.build import build
from semseg.nn.inverted_residual import InvertedResidual
from semseg.nn.make_divisible import make_divisible

D8 = dict(strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4))


@pytest.mark.parametrize(("value", "expected"), [(32, 32), (8, 8), (3, 8), (12, 16), (18, 24), (100, 104),
                                                 (160, 160), (20, 24)])
def test_make_divisible(value: float, expected: int) -> None:
    assert make_divisible(value, 8) == expected
    assert make_divisible(value, 8) % 8 == 0 and make_divisible(value, 8) >= 0.9 * value


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    return (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
        * bn.weight[:, None, None] + bn.bias[:, None, None]


def _randomize_norms(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(5)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize("dilation", [1, 2])
def test_inverted_residual_matches_reference(dilation: int) -> None:
    block = InvertedResidual(8, 8, 1, expand_ratio=3, dilation=dilation).eval()
    _randomize_norms(block)
    x = torch.randn(2, 8, 13, 17)
    expand, depthwise, project = block.conv
    ref = F.relu6(_bn(F.conv2d(x, expand.conv.weight), expand.bn))
    ref = F.relu6(_bn(F.conv2d(ref, depthwise.conv.weight, padding=dilation, dilation=dilation, groups=24),
                      depthwise.bn))
    ref = x + _bn(F.conv2d(ref, project.conv.weight), project.bn)
    with torch.no_grad():
        assert torch.allclose(block(x), ref, atol=1e-5)


def test_inverted_residual_shapes_and_errors() -> None:
    strided = InvertedResidual(8, 16, 2, expand_ratio=1)
    assert len(strided.conv) == 2 and not strided.use_res_connect  # no expand conv at ratio 1
    assert strided(torch.randn(2, 8, 13, 17)).shape == (2, 16, 7, 9)
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual(8, 8, 3, expand_ratio=6)


@pytest.mark.parametrize(("kwargs", "channels", "strides"), [
    ({}, [24, 32, 96, 320], [4, 8, 16, 32]),
    (D8, [24, 32, 96, 320], [4, 8, 8, 8]),
    (dict(widen_factor=0.5, out_indices=(0, 6), **D8), [8, 160], [2, 8]),
])
def test_backbone_channels_and_strides(kwargs: dict, channels: list[int], strides: list[int]) -> None:
    model = build("backbone", dict(type="MobileNetV2", **kwargs)).eval()
    assert model.out_channels == channels and model.out_strides == strides
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model(x)
    assert isinstance(feats, list)
    for f, c, s in zip(feats, channels, strides, strict=True):
        assert f.shape == (2, c, 64 // s, 96 // s)
    with torch.no_grad():
        odd = model(torch.randn(2, 3, 13, 17))  # any size: each stride-2 conv rounds up
    assert [f.shape[2:] for f in odd] == [(-(-13 // s), -(-17 // s)) for s in strides]


def test_single_out_index_still_gives_a_list() -> None:
    model = build("backbone", dict(type="MobileNetV2", widen_factor=0.35, out_indices=(3,))).eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 32, 32))
    assert isinstance(feats, list) and len(feats) == 1 and feats[0].shape[1] == model.out_channels[0]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(strides=(1, 2, 2)), "one entry per layer"),
    (dict(out_indices=(7,)), "out_indices"),
    (dict(out_indices=()), "out_indices"),
    (dict(frozen_stages=7), "frozen_stages"),
    (dict(pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth")), "either"),
])
def test_backbone_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build("backbone", dict(type="MobileNetV2", **kwargs))


def test_frozen_stages_and_norm_eval() -> None:
    model = build("backbone", dict(type="MobileNetV2", widen_factor=0.35, frozen_stages=2, norm_eval=False))
    model.train()
    assert not any(p.requires_grad for p in model.conv1.parameters())
    assert not any(p.requires_grad for n in ("layer1", "layer2") for p in getattr(model, n).parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert not model.layer2.training and model.layer3.training
    assert model.conv1.training  # as in MMSegmentation, the stem's norm keeps its batch statistics

    model = build("backbone", dict(type="MobileNetV2", widen_factor=0.35, norm_eval=True)).train()
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_with_cp_same_output_and_gradients() -> None:
    cfg = dict(type="MobileNetV2", widen_factor=0.35, out_indices=(2, 4))
    torch.manual_seed(0)
    plain = build("backbone", cfg)
    ours = build("backbone", dict(cfg, with_cp=True))
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 29, 31, requires_grad=True)
    outs = [sum(f.sum() for f in m(x)) for m in (plain, ours)]
    grads = [torch.autograd.grad(o, x)[0] for o in outs]
    assert torch.allclose(outs[0], outs[1], atol=1e-4) and torch.allclose(grads[0], grads[1], atol=1e-5)
