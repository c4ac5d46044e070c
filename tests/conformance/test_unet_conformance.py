"""U-Net, DiceLoss and a medical U-Net zoo model against MMSegmentation 1.2.2: same keys, same features,
logits (whole and slide inference) and losses.

U-Net takes inputs whose sides are multiples of its ``input_divisor`` (16 for the zoo's five stages with four
max pools; odd sizes are refused, as by the oracle), so the backbone is compared on 48x80 and, with two
poolings, on 36x44; slide inference runs on an odd-sized image whose windows are the config's 64x64 crops.
"""

from __future__ import annotations

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_features_equal,
    assert_loss_equal,
    backbone_pair,
    install_ext_stub,
    max_diff,
    oracle_inference,
    require_oracle,
    zoo_pair,
)

from semseg.build import build

BACKBONES = {
    "interp_zoo": dict(type="UNet", base_channels=4, upsample_cfg=dict(type="InterpConv")),
    "deconv_zoo": dict(type="UNet", base_channels=4, upsample_cfg=dict(type="DeconvModule")),
    # stride-2 convs, a stage that keeps its size (1x1 conv "upsample"), dilations, conv-first 3x3 InterpConv
    "mixed": dict(type="UNet", base_channels=4, strides=(1, 2, 1, 1, 1), downsamples=(True, False, True, False),
                  enc_num_convs=(1, 2, 3, 2, 1), dec_num_convs=(1, 2, 1, 3), enc_dilations=(1, 2, 1, 2, 1),
                  dec_dilations=(2, 1, 2, 1), upsample_cfg=dict(type="InterpConv", conv_first=True, kernel_size=3,
                                                                padding=1)),
    "deconv_k2_gn": dict(type="UNet", base_channels=4, num_stages=3, strides=(1, 1, 1), enc_num_convs=(2, 2, 2),
                         dec_num_convs=(2, 2), downsamples=(True, True), enc_dilations=(1, 1, 1),
                         dec_dilations=(1, 1), norm_cfg=dict(type="GN", num_groups=2),
                         upsample_cfg=dict(type="DeconvModule", kernel_size=2)),
}
CASES = [("interp_zoo", (48, 80)), ("deconv_zoo", (48, 80)), ("mixed", (36, 44)), ("deconv_k2_gn", (36, 44))]


@pytest.mark.parametrize(("name", "size"), CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_backbone_same_keys_and_features(name: str, size: tuple[int, int]) -> None:
    oracle, ours = backbone_pair(BACKBONES[name])
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert_features_equal(got, expected, ours.out_channels, min_abs=1e-2)


def test_backbone_refuses_the_sizes_the_oracle_refuses() -> None:
    oracle, ours = backbone_pair(BACKBONES["interp_zoo"])
    x = torch.randn(1, 3, 40, 48)
    with pytest.raises(AssertionError, match="divisible"):
        oracle(x)
    with pytest.raises(ValueError, match="input size 40x48 must be divisible by 16"):
        ours(x)


def _oracle_dice(**kwargs):
    require_oracle()
    install_ext_stub()
    from mmseg.models.losses import DiceLoss

    return DiceLoss(**kwargs)


@pytest.mark.parametrize("num_classes", [1, 2, 5])
@pytest.mark.parametrize("use_sigmoid", [True, False])
@pytest.mark.parametrize("naive_dice", [True, False])
@pytest.mark.parametrize("ignore_index", [255, 1])
def test_dice_loss_values_and_gradients(num_classes: int, use_sigmoid: bool, naive_dice: bool,
                                        ignore_index: int) -> None:
    kwargs = dict(use_sigmoid=use_sigmoid, naive_dice=naive_dice, loss_weight=3.0, ignore_index=ignore_index)
    theirs = _oracle_dice(**kwargs)
    ours = build("loss", dict(type="DiceLoss", **kwargs))
    gen = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(2, num_classes, 13, 17, generator=gen)
    labels = torch.randint(0, max(num_classes, 2), (2, 13, 17), generator=gen)
    labels[:, :3] = 255  # ignored pixels
    labels[0, 5, :4] = -1
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    expected = theirs(a, labels, ignore_index=255)
    got = ours(b, labels, ignore_index=255)
    expected.backward()
    got.backward()
    assert expected.item() > 1e-2
    assert abs(got.item() - expected.item()) < 1e-6
    assert max_diff(b.grad, a.grad) < 1e-7
    weight = torch.tensor([0.5, 2.0])
    for options in (dict(reduction_override="none"), dict(reduction_override="sum"),
                    dict(weight=weight, avg_factor=3.0)):
        assert max_diff(ours(logits, labels, **options), theirs(logits, labels, **options)) < 1e-6


# A medical zoo model with slide inference and cross entropy + Dice, at base_channels 8 (heads narrowed to
# match); both sides get the same overrides.
NAME = "unet-s5-d16_fcn_4xb4-ce-1.0-dice-3.0-40k_drive-64x64"
NARROW = {"model.backbone.base_channels": 8, "model.decode_head.in_channels": 8, "model.decode_head.channels": 8,
          "model.auxiliary_head.in_channels": 16, "model.auxiliary_head.channels": 8}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    return zoo_pair(f"semseg/configs/unet/{NAME}.py", tmp_path_factory.mktemp("ckpt"), NARROW)


def test_zoo_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair, size=(48, 80))


def test_zoo_slide_inference_with_the_config_windows(pair) -> None:
    oracle, ours = pair
    assert ours.test_cfg["mode"] == "slide"
    assert tuple(ours.test_cfg["crop_size"]) == (64, 64) and tuple(ours.test_cfg["stride"]) == (42, 42)
    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(1))  # windows overlap unevenly
    expected = oracle_inference(oracle, x)
    with torch.no_grad():
        got = ours.inference(x)
    assert expected.abs().max() > 1e-3
    assert max_diff(got, expected) < 1e-4


def test_zoo_loss_ce_plus_dice(pair) -> None:
    got = assert_loss_equal(*pair, size=(48, 64))
    assert {"decode.loss_ce", "decode.loss_dice", "aux.loss_ce"} <= set(got)
