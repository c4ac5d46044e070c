"""The FPN neck (output shapes in every add_extra_convs form, the top-down pathway against a reference written
here, argument errors) and the FPN head (scale heads, shapes, errors); a narrow Semantic FPN model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg
from semseg.build import build
from semseg.config import CONFIG_ROOT

CHANNELS = [4, 6, 8, 10]
SIZES = [(25, 33), (13, 17), (7, 9), (4, 5)]  # strides 4..32 of a 97x131 image


def features(sizes=SIZES, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, *hw, generator=gen) for c, hw in zip(CHANNELS, sizes, strict=True)]


def fpn(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build("neck", dict(type="FPN", in_channels=CHANNELS, out_channels=5, num_outs=4) | kwargs).eval()


def half(size: tuple[int, int]) -> tuple[int, int]:
    """Size after a stride-2 3x3 conv with padding 1, or a stride-2 max-pool of kernel 1: ceil(n / 2)."""
    return ((size[0] + 1) // 2, (size[1] + 1) // 2)


@pytest.mark.parametrize("add_extra_convs", [False, True, "on_input", "on_lateral", "on_output"])
@pytest.mark.parametrize("start_level", [0, 1])
def test_fpn_output_shapes_in_every_extra_conv_form(add_extra_convs, start_level: int) -> None:
    neck = fpn(num_outs=6, start_level=start_level, add_extra_convs=add_extra_convs)
    with torch.no_grad():
        outs = neck(features())
    expected = list(SIZES[start_level:])
    while len(expected) < 6:
        expected.append(half(expected[-1]))
    assert [tuple(o.shape) for o in outs] == [(2, 5, *hw) for hw in expected]
    num_extra_convs = 6 - (4 - start_level) if add_extra_convs else 0
    assert len(neck.lateral_convs) == 4 - start_level
    assert len(neck.fpn_convs) == 4 - start_level + num_extra_convs
    if add_extra_convs == "on_input":  # the first extra conv reads the last input (10 channels)
        assert neck.fpn_convs[4 - start_level].conv.in_channels == CHANNELS[-1]


def test_fpn_end_level_uses_a_slice_of_the_inputs() -> None:
    neck = fpn(num_outs=2, start_level=1, end_level=3)
    with torch.no_grad():
        outs = neck(features())
    assert [tuple(o.shape[2:]) for o in outs] == SIZES[1:3]
    assert [c.conv.in_channels for c in neck.lateral_convs] == CHANNELS[1:3]


def test_fpn_matches_a_reference_written_here() -> None:
    """Laterals, top-down sums of nearest-upsampled levels (top first), 3x3 smoothing; ReLU before the
    second and later extra convs."""
    neck = fpn(num_outs=6, add_extra_convs="on_lateral", relu_before_extra_convs=True)
    feats = features()
    with torch.no_grad():
        outs = neck(feats)
        lateral = [F.conv2d(x, m.conv.weight, m.conv.bias) for x, m in zip(feats, neck.lateral_convs, strict=True)]
        for i in (3, 2, 1):
            lateral[i - 1] = lateral[i - 1] + F.interpolate(lateral[i], size=lateral[i - 1].shape[2:], mode="nearest")
        expected = [F.conv2d(x, m.conv.weight, m.conv.bias, padding=1)
                    for x, m in zip(lateral, neck.fpn_convs, strict=False)]
        extra = neck.fpn_convs[4].conv
        expected.append(F.conv2d(lateral[3], extra.weight, extra.bias, stride=2, padding=1))
        extra = neck.fpn_convs[5].conv
        expected.append(F.conv2d(expected[-1].relu(), extra.weight, extra.bias, stride=2, padding=1))
    assert len(outs) == len(expected) == 6
    for got, want in zip(outs, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_fpn_upsample_cfg() -> None:
    sizes = [(24, 32), (12, 16), (6, 8), (3, 4)]
    feats = features(sizes)
    nearest = fpn()
    by_scale = fpn(upsample_cfg=dict(mode="nearest", scale_factor=2))
    bilinear = fpn(upsample_cfg=dict(mode="bilinear", align_corners=False))
    with torch.no_grad():
        a, b, c = nearest(feats), by_scale(feats), bilinear(feats)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # sizes halve exactly: the same
    assert not torch.allclose(a[0], c[0])
    assert torch.equal(a[-1], c[-1])  # the top level is not upsampled


def test_fpn_norm_and_activation() -> None:
    neck = fpn(norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU"), no_norm_on_lateral=True)
    keys = set(neck.state_dict())
    assert "lateral_convs.0.conv.bias" in keys and "lateral_convs.0.bn.weight" not in keys
    assert "fpn_convs.0.bn.running_mean" in keys and "fpn_convs.0.conv.bias" not in keys
    with torch.no_grad():
        assert all((o >= 0).all() for o in neck(features()))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(in_channels=4), TypeError, "in_channels must be a list"),
        (dict(num_outs=3), ValueError, "num_outs=3"),
        (dict(num_outs=2, end_level=3), ValueError, "end_level=3"),
        (dict(num_outs=5, end_level=5), ValueError, "end_level=5"),
        (dict(num_outs=5, add_extra_convs="on_top"), ValueError, "add_extra_convs"),
    ],
)
def test_fpn_argument_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        fpn(**kwargs)


def test_fpn_wrong_number_of_inputs() -> None:
    with pytest.raises(ValueError, match="expected 4 input levels, got 3"):
        fpn()(features()[:3])


def fpn_head(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(type="FPNHead", in_channels=CHANNELS, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32],
               channels=6, num_classes=3, norm_cfg=dict(type="BN"))
    return build("head", cfg | kwargs).eval()


@pytest.mark.filterwarnings("ignore:align_corners=True upsamples")
@pytest.mark.parametrize("align_corners", [False, True])
def test_fpn_head_shapes_and_scale_heads(align_corners: bool) -> None:
    head = fpn_head(align_corners=align_corners)
    # a level at stride s gets log2(s / 4) conv blocks (at least one), each followed by a x2 upsampling
    assert [len(s) for s in head.scale_heads] == [1, 2, 4, 6]
    convs = [k for k in head.state_dict() if k.endswith("conv.weight")]
    assert "scale_heads.3.4.conv.weight" in convs and len(convs) == 7
    with torch.no_grad():
        logits = head(features())
    assert logits.shape == (2, 3, *SIZES[0])


def test_fpn_head_loss_keys() -> None:
    head = fpn_head().train()
    labels = torch.randint(0, 3, (2, 97, 131))
    losses = head.loss(features(), labels)
    assert set(losses) == {"loss_ce", "acc_seg"}
    losses["loss_ce"].backward()
    assert head.scale_heads[3][4].conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(feature_strides=[4, 8, 16]), "differ in length"),
        (dict(feature_strides=[8, 4, 16, 32]), "must be the smallest"),
    ],
)
def test_fpn_head_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fpn_head(**kwargs)


NARROW = {
    "model.backbone.depth": 18,
    "model.backbone.stem_channels": 8,
    "model.backbone.base_channels": 4,
    "model.neck.in_channels": [4, 8, 16, 32],
    "model.neck.out_channels": 8,
    "model.decode_head.in_channels": [8, 8, 8, 8],
    "model.decode_head.channels": 4,
}


def test_semantic_fpn_model_from_its_config() -> None:
    model = semseg.init_model(CONFIG_ROOT / "sem_fpn" / "fpn_r50_4xb4-160k_ade20k-512x512.py",
                              cfg_options=NARROW)
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        assert model.encode_decode(x).shape == (2, 150, 45, 61)
    model.train()
    losses = model.loss(x, torch.randint(0, 150, (2, 45, 61)))
    assert set(losses) == {"decode.loss_ce", "decode.acc_seg"}
