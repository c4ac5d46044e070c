"""CGNet against MMSegmentation 1.2.2: the backbone (keys, features) and its zoo model end to end
(encode_decode, slide inference, class-weighted loss). CGNet accepts any input size (each stride-2 step
rounds up), so the inputs are odd-sized."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from oracle import (
    build_oracle_model,
    build_oracle_module,
    load_oracle_config,
    oracle_encode_decode,
    oracle_inference,
    oracle_loss,
    randomize_,
    require_oracle,
    save_oracle_state_dict,
)

import semseg
from semseg.build import build

TOL = 1e-4
CONFIG_DIR = Path(semseg.__file__).parent / "configs" / "cgnet"
BN3 = dict(type="BN", eps=1e-3, requires_grad=True)
BACKBONES = {
    "small": dict(type="CGNet", num_channels=(8, 16, 32), num_blocks=(2, 3), dilations=(2, 4), reductions=(4, 8),
                  norm_cfg=BN3),
    "one-block-relu": dict(type="CGNet", num_channels=(6, 8, 16), num_blocks=(1, 1), dilations=(3, 5),
                           reductions=(2, 2), act_cfg=dict(type="ReLU"), norm_cfg=dict(type="BN")),
}
ZOO = ["cgnet_fcn_4xb8-60k_cityscapes-512x1024"]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_keys_and_features(name: str) -> None:
    require_oracle()
    cfg = BACKBONES[name]
    torch.manual_seed(0)
    oracle = randomize_(build_oracle_module(cfg), seed=1)
    oracle.eval()  # the oracle's CGNet.train returns None: no chaining
    ours = build("backbone", dict(cfg)).eval()
    state = oracle.state_dict()
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert len(got) == len(expected) == 3
    for level, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape[1] == ours.out_channels[level]
        assert e.abs().max() > 1e-3
        assert _max_diff(g, e) < TOL, f"level {level}"


@pytest.fixture(scope="module", params=ZOO)
def pair(request, tmp_path_factory):
    name = request.param
    oracle = randomize_(build_oracle_model(load_oracle_config(name, "cgnet").model, seed=1), seed=2)
    path = save_oracle_state_dict(oracle, tmp_path_factory.mktemp("ckpt") / f"{name}.pth")
    ours = semseg.init_model(str(CONFIG_DIR / f"{name}.py"), checkpoint=path)
    assert set(ours.state_dict()) == set(oracle.state_dict())
    return oracle, ours


def test_encode_decode(pair) -> None:
    oracle, ours = pair
    x = torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(0))
    expected = oracle_encode_decode(oracle, x)
    with torch.no_grad():
        got = ours.encode_decode(x)
    assert expected.abs().max() > 1e-3
    assert _max_diff(got, expected) < TOL


def test_slide_inference(pair) -> None:
    oracle, ours = pair
    x = torch.randn(2, 3, 53, 71, generator=torch.Generator().manual_seed(1))
    crop, stride = (40, 56), (27, 31)  # 2 x 2 windows that overlap unevenly and do not divide the image
    expected = oracle_inference(oracle, x, mode="slide", crop_size=crop, stride=stride)
    ours.test_cfg = {"mode": "slide", "crop_size": crop, "stride": stride}
    try:
        with torch.no_grad():
            got = ours.inference(x)
    finally:
        ours.test_cfg = {"mode": "whole"}
    assert _max_diff(got, expected) < TOL


def test_class_weighted_loss(pair) -> None:
    oracle, ours = pair
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 49, 67, generator=generator)
    # No ignored pixels: with class_weight, MMSegmentation 1.2.2 indexes the weights by every label and
    # raises an IndexError on 255 (cross_entropy_loss.py, its avg_factor); ours counts such pixels as 1.
    labels = torch.randint(0, 19, (2, 49, 67), generator=generator)
    oracle.train()
    ours.train()
    try:
        expected = oracle_loss(oracle, x, labels)
        got = ours.loss(x, labels)
    finally:
        oracle.eval()
        ours.eval()
    assert set(got) == set(expected) == {"decode.loss_ce", "decode.acc_seg"}
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < TOL, key
