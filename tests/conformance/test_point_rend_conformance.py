"""PointRend against MMSegmentation 1.2.2: ``point_sample`` vs mmcv's, the point head's subdivision inference
(bitwise, top-k selections included), its training points under the same random stream, its losses (same
stream, and at fixed points), and a PointRend zoo model end to end at reduced width."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_slide_equal,
    head_pair,
    install_ext_stub,
    max_diff,
    oracle_loss,
    set_dropout_off,
    zoo_pair,
)

from semseg.nn.point_sample import point_sample

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "semseg" / "configs"
CE = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
TRAIN_CFG = dict(num_points=96, oversample_ratio=3, importance_sample_ratio=0.75)
FEATS = [(8, (13, 17)), (6, (7, 9))]  # (channels, size) of the two input levels
PREV = (7, 9)  # size of the coarse logits
IMAGE = (51, 67)  # size of the labels


def point_cfg(**kwargs) -> dict:
    cfg = dict(type="PointHead", in_channels=[8], in_index=[0], channels=12, num_fcs=3, coarse_pred_each_layer=True,
               dropout_ratio=-1, num_classes=5, align_corners=False, loss_decode=CE)
    return cfg | kwargs


CASES = {
    "default": point_cfg(),
    "align_corners": point_cfg(align_corners=True),
    "two_levels_no_coarse_each_layer": point_cfg(in_channels=[8, 6], in_index=[0, 1], coarse_pred_each_layer=False),
    "one_fc_gn_dropout": point_cfg(num_fcs=1, norm_cfg=dict(type="GN", num_groups=3), dropout_ratio=0.1),
}


def inputs(seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, c, *hw, generator=gen) for c, hw in FEATS]
    return feats, 3 * torch.randn(2, 5, *PREV, generator=gen)


def oracle_cfg(cfg: dict):
    from mmengine.config import ConfigDict

    return ConfigDict(cfg)


@pytest.mark.parametrize("align_corners", [False, True])
def test_point_sample_matches_mmcv(align_corners: bool) -> None:
    install_ext_stub()
    from mmcv.ops import point_sample as mmcv_point_sample

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=gen)
    points = torch.rand(2, 40, 2, generator=gen) * 1.2 - 0.1  # some outside [0, 1]
    points[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # the corners
    assert torch.equal(point_sample(x, points, align_corners), mmcv_point_sample(x, points, align_corners))
    grid = points.view(2, 5, 8, 2)
    assert torch.equal(point_sample(x, grid, align_corners), mmcv_point_sample(x, grid, align_corners))


@pytest.mark.parametrize("num_points", [100, 10_000])  # fewer than the pixels of both steps; more
@pytest.mark.parametrize("name", list(CASES))
def test_subdivision_inference_is_exact(name: str, num_points: int) -> None:
    oracle, ours = head_pair(CASES[name])
    oracle.eval()
    ours.eval()
    test_cfg = dict(subdivision_steps=2, subdivision_num_points=num_points, scale_factor=2)
    ours.test_cfg = test_cfg
    feats, prev = inputs(1)
    with torch.no_grad():
        got = ours(feats, prev)
        size = (PREV[0] * 4, PREV[1] * 4)
        expected = oracle.predict(feats, prev, [dict(img_shape=size)] * 2, oracle_cfg(test_cfg))
    assert got.shape == expected.shape == (2, 5, *size)
    assert torch.equal(got, expected)
    upsampled = torch.nn.functional.interpolate(prev, size=size, mode="bilinear", align_corners=False)
    assert (got - upsampled).abs().max() > 1e-2  # the point head replaced logits


@pytest.mark.parametrize("importance_sample_ratio", [0.0, 0.75, 1.0])
def test_training_points_under_the_same_random_stream(importance_sample_ratio: float) -> None:
    from mmseg.models.decode_heads.point_head import calculate_uncertainty

    oracle, ours = head_pair(point_cfg())
    train_cfg = TRAIN_CFG | dict(importance_sample_ratio=importance_sample_ratio)
    ours.train_cfg = train_cfg
    _, prev = inputs(2)
    torch.manual_seed(7)
    expected = oracle.get_points_train(prev, calculate_uncertainty, cfg=oracle_cfg(train_cfg))
    torch.manual_seed(7)
    got = ours.sample_train_points(prev)
    assert got.shape == (2, TRAIN_CFG["num_points"], 2)
    assert torch.equal(got, expected)


def labels_with_ignored_rows(seed: int) -> torch.Tensor:
    labels = torch.randint(0, 5, (2, *IMAGE), generator=torch.Generator().manual_seed(seed))
    labels[:, :9] = 255
    return labels


def oracle_point_loss(oracle, feats, prev, labels) -> dict[str, torch.Tensor]:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for label in labels:
        sample = SegDataSample(metainfo=dict(img_shape=IMAGE, ori_shape=IMAGE))
        sample.gt_sem_seg = PixelData(data=label[None])
        samples.append(sample)
    return dict(oracle.loss(feats, prev, samples, oracle_cfg(TRAIN_CFG)))


def assert_losses_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected) == {"pointloss_ce", "acc_point"}
    assert expected["pointloss_ce"] > 0.1
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < 1e-4, key


@pytest.mark.parametrize("name", list(CASES))
def test_loss_under_the_same_random_stream(name: str) -> None:
    oracle, ours = head_pair(CASES[name])
    set_dropout_off(oracle)
    set_dropout_off(ours)
    ours.train_cfg = TRAIN_CFG
    feats, prev = inputs(3)
    labels = labels_with_ignored_rows(4)
    torch.manual_seed(11)
    expected = oracle_point_loss(oracle, feats, prev, labels)
    torch.manual_seed(11)
    got = ours.loss(feats, labels, prev)
    assert_losses_equal(got, expected)


def test_loss_at_fixed_points(monkeypatch) -> None:
    """The same points given to both heads (sampling patched out), points on the image border included."""
    oracle, ours = head_pair(CASES["align_corners"])
    points = torch.rand(2, 64, 2, generator=torch.Generator().manual_seed(5))
    points[:, :3] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 1.0]])
    monkeypatch.setattr(oracle, "get_points_train", lambda *args, **kwargs: points)
    monkeypatch.setattr(ours, "sample_train_points", lambda logits: points)
    feats, prev = inputs(6)
    prev.requires_grad_(True)
    labels = labels_with_ignored_rows(7)
    expected = oracle_point_loss(oracle, feats, prev, labels)
    (expected_grad,) = torch.autograd.grad(expected["pointloss_ce"], prev)
    got = ours.loss(feats, labels, prev)
    (got_grad,) = torch.autograd.grad(got["pointloss_ce"], prev)  # the coarse logits get the point loss's gradient
    assert_losses_equal(got, expected)
    assert expected_grad.abs().max() > 0
    assert max_diff(got_grad, expected_grad) < 1e-6


# PointRend R-50 at reduced width (8-channel stem and base, 16-channel FPN, 8-channel FPN head, 16-channel point
# MLP), refining only the 300 most uncertain pixels per step so that the top-k selection is exercised.
NARROW = {
    "model.backbone.stem_channels": 8,
    "model.backbone.base_channels": 8,
    "model.neck.in_channels": [32, 64, 128, 256],
    "model.neck.out_channels": 16,
    "model.decode_head.0.in_channels": [16, 16, 16, 16],
    "model.decode_head.0.channels": 8,
    "model.decode_head.1.in_channels": [16],
    "model.decode_head.1.channels": 16,
    "model.test_cfg.subdivision_num_points": 300,
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    path = CONFIG_ROOT / "point_rend" / "pointrend_r50_4xb2-80k_cityscapes-512x1024.py"
    return zoo_pair(path, tmp_path_factory.mktemp("ckpt"), NARROW)


def test_zoo_encode_decode(pair):
    assert_encode_decode_equal(*pair, size=(57, 83))


def test_zoo_slide_inference(pair):
    # windows overlap unevenly and do not divide the image
    assert_slide_equal(*pair, size=(61, 75), crop=(40, 48), stride=(25, 29))


def test_zoo_loss_under_the_same_random_stream(pair):
    oracle, ours = pair
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 49, 67, generator=generator)
    labels = torch.randint(0, ours.num_classes, (2, 49, 67), generator=generator)
    labels[:, :5] = 255
    for model in (oracle, ours):
        model.train()
        set_dropout_off(model)
    try:
        torch.manual_seed(3)
        expected = oracle_loss(oracle, x, labels)
        torch.manual_seed(3)
        got = ours.loss(x, labels)
    finally:
        oracle.eval()
        ours.eval()
    assert set(got) == set(expected) == {"decode_0.loss_ce", "decode_0.acc_seg", "decode_1.pointloss_ce",
                                         "decode_1.acc_point"}
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < 1e-4, key
