"""Fast-SCNN backbone and DepthwiseSeparableFCNHead: shapes, stated channels and strides, options, errors."""

from __future__ import annotations

import pytest
import torch

from semseg.build import build
from semseg.models.backbones.fast_scnn import FastSCNN
from semseg.nn.depthwise_separable import DepthwiseSeparableConvModule

SMALL = dict(type="FastSCNN", downsample_dw_channels=(8, 12), global_in_channels=16,
             global_block_channels=(16, 24, 32), global_out_channels=32, higher_in_channels=16,
             lower_in_channels=32, fusion_out_channels=16)


def _small(**overrides) -> FastSCNN:
    return build("backbone", {**SMALL, **overrides})


@pytest.mark.parametrize("size", [(64, 96), (75, 101)])
def test_features_match_stated_channels_and_strides(size: tuple[int, int]) -> None:
    model = _small().eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, *size))
    assert model.out_channels == [16, 32, 16]
    assert model.out_strides == [8, 32, 8]
    for feat, channels, stride in zip(feats, model.out_channels, model.out_strides, strict=True):
        # each stride-2 step rounds up
        h, w = size
        for _ in range(stride.bit_length() - 1):
            h, w = -(-h // 2), -(-w // 2)
        assert feat.shape == (2, channels, h, w)


def test_out_indices_and_strides_follow_the_config() -> None:
    model = _small(out_indices=(2, 0), global_block_strides=(2, 1, 1)).eval()
    assert model.out_channels == [16, 16] and model.out_strides == [8, 8]
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(16, 8, 8), (16, 8, 8)]
    assert _small(global_block_strides=(2, 1, 1)).out_strides == [8, 16, 8]


def test_learning_to_downsample_has_no_depthwise_activation_by_default() -> None:
    model = _small()
    ltd = model.learning_to_downsample
    assert ltd.dsconv1.depthwise_conv.activate is None
    assert isinstance(ltd.dsconv1.pointwise_conv.activate, torch.nn.ReLU)
    assert isinstance(_small(dw_act_cfg=dict(type="ReLU")).learning_to_downsample.dsconv2.depthwise_conv.activate,
                      torch.nn.ReLU)
    gfe = model.global_feature_extractor
    assert [len(g) for g in (gfe.bottleneck1, gfe.bottleneck2, gfe.bottleneck3)] == [3, 3, 3]
    assert isinstance(gfe.bottleneck1[0].conv[0].activate, torch.nn.ReLU)  # the backbone's act, not ReLU6
    assert len(gfe.ppm) == 4 and gfe.ppm[0][1].conv.out_channels == 32 // 4


@pytest.mark.parametrize("bad", [dict(global_in_channels=24), dict(lower_in_channels=48), dict(out_indices=(3,)),
                                 dict(out_indices=()), dict(downsample_dw_channels=(8,)),
                                 dict(global_block_channels=(16, 32))])
def test_bad_arguments_are_reported(bad: dict) -> None:
    with pytest.raises(ValueError):
        _small(**bad)


HEAD = dict(type="DepthwiseSeparableFCNHead", in_channels=12, channels=8, num_classes=5, num_convs=2,
            concat_input=True, norm_cfg=dict(type="BN", requires_grad=True), dropout_ratio=0.0)


def test_sep_fcn_head_blocks_and_shapes() -> None:
    head = build("head", dict(HEAD)).eval()
    assert all(isinstance(m, DepthwiseSeparableConvModule) for m in [*head.convs, head.conv_cat])
    assert head.convs[0].depthwise_conv.activate is None
    assert head.conv_cat.depthwise_conv.conv.in_channels == 12 + 8
    feats = [torch.randn(2, 6, 5, 7), torch.randn(2, 12, 13, 17)]
    assert head(feats).shape == (2, 5, 13, 17)
    labels = torch.randint(0, 5, (2, 25, 33))
    losses = build("head", dict(HEAD)).loss(feats, labels)
    assert set(losses) == {"loss_ce", "acc_seg"} and losses["loss_ce"] > 0


def test_sep_fcn_head_options() -> None:
    head = build("head", {**HEAD, "num_convs": 1, "concat_input": False, "kernel_size": 5,
                          "dw_act_cfg": dict(type="ReLU")})
    assert len(head.convs) == 1 and not hasattr(head, "conv_cat")
    assert head.convs[0].depthwise_conv.conv.kernel_size == (5, 5)
    assert head.convs[0].depthwise_conv.conv.padding == (2, 2)
    assert isinstance(head.convs[0].depthwise_conv.activate, torch.nn.ReLU)
    with pytest.raises(ValueError, match="num_convs"):
        build("head", {**HEAD, "num_convs": 0})


def test_zoo_model_builds_with_three_heads() -> None:
    from pathlib import Path

    import semseg
    from semseg.config import load_config

    path = Path(semseg.__file__).parent / "configs" / "fastscnn" / "fast_scnn_8xb4-160k_cityscapes-512x1024.py"
    cfg = load_config(str(path))
    model = build("segmentor", cfg.model.to_dict()).eval()
    x = torch.randn(1, 3, 67, 91)
    with torch.no_grad():
        assert model.encode_decode(x).shape == (1, 19, 67, 91)
    assert len(model.auxiliary_head) == 2
