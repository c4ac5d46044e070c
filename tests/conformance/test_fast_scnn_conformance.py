"""Fast-SCNN against MMSegmentation 1.2.2: the backbone (keys, features), DepthwiseSeparableFCNHead
(logits, loss) and the zoo model end to end (encode_decode, slide inference, the sigmoid losses of its
three heads). Fast-SCNN accepts any input size (strided convs round up; the fusion resizes the 1/32 branch
to the 1/8 one), so the inputs are odd-sized."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from oracle import (
    build_oracle_model,
    build_oracle_module,
    head_pair,
    load_oracle_config,
    oracle_encode_decode,
    oracle_head_loss,
    oracle_inference,
    oracle_loss,
    randomize_,
    require_oracle,
    save_oracle_state_dict,
)

import semseg
from semseg.build import build

TOL = 1e-4
CONFIG_DIR = Path(semseg.__file__).parent / "configs" / "fastscnn"
SMALL = dict(downsample_dw_channels=(8, 12), global_in_channels=16, global_block_channels=(16, 24, 32),
             global_out_channels=32, higher_in_channels=16, lower_in_channels=32, fusion_out_channels=16)
BACKBONES = {
    "small": dict(type="FastSCNN", **SMALL),
    "small-aligned-dwact-stride1": dict(type="FastSCNN", **{**SMALL, "global_block_strides": (2, 1, 1)},
                                        align_corners=True, dw_act_cfg=dict(type="ReLU"), out_indices=(2, 0)),
}
ZOO = ["fast_scnn_8xb4-160k_cityscapes-512x1024"]


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
    x = torch.randn(2, 3, 75, 101, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert len(got) == len(expected) == len(cfg.get("out_indices", (0, 1, 2)))
    for level, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape[1] == ours.out_channels[level]
        assert e.abs().max() > 1e-3
        assert _max_diff(g, e) < TOL, f"level {level}"


HEADS = {
    "concat-dwact": dict(type="DepthwiseSeparableFCNHead", in_channels=12, channels=8, num_convs=2,
                         concat_input=True, dw_act_cfg=dict(type="ReLU"), num_classes=5, dropout_ratio=0.0,
                         norm_cfg=dict(type="BN", requires_grad=True)),
    "one-conv-sigmoid": dict(type="DepthwiseSeparableFCNHead", in_channels=12, channels=8, num_convs=1,
                             concat_input=False, kernel_size=5, num_classes=5, dropout_ratio=0.0,
                             norm_cfg=dict(type="BN", requires_grad=True),
                             loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=0.7)),
}


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("name", list(HEADS))
def test_sep_fcn_head(name: str, align_corners: bool) -> None:
    require_oracle()
    cfg = dict(HEADS[name], align_corners=align_corners)
    oracle, ours = head_pair(cfg)
    generator = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 12, 13, 17, generator=generator)]
    oracle.eval()
    ours.eval()
    with torch.no_grad():
        expected, got = oracle(feats), ours(feats)
    assert expected.abs().max() > 1e-3
    assert _max_diff(got, expected) < TOL

    labels = torch.randint(0, 5, (2, 25, 33), generator=generator)
    labels[:, :3] = 255
    oracle.train()
    ours.train()
    expected_loss = oracle_head_loss(oracle, feats, labels)
    got_loss = ours.loss(feats, labels)
    assert set(got_loss) == set(expected_loss)
    for key in expected_loss:
        assert abs(got_loss[key].item() - expected_loss[key].item()) < TOL, key


@pytest.fixture(scope="module", params=ZOO)
def pair(request, tmp_path_factory):
    name = request.param
    oracle = randomize_(build_oracle_model(load_oracle_config(name, "fastscnn").model, seed=1), seed=2)
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
    x = torch.randn(2, 3, 71, 97, generator=torch.Generator().manual_seed(1))
    crop, stride = (48, 56), (27, 31)
    expected = oracle_inference(oracle, x, mode="slide", crop_size=crop, stride=stride)
    ours.test_cfg = {"mode": "slide", "crop_size": crop, "stride": stride}
    try:
        with torch.no_grad():
            got = ours.inference(x)
    finally:
        ours.test_cfg = {"mode": "whole"}
    assert _max_diff(got, expected) < TOL


def test_loss(pair) -> None:
    oracle, ours = pair
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 49, 67, generator=generator)
    labels = torch.randint(0, 19, (2, 49, 67), generator=generator)
    labels[:, :5] = 255
    for model in (oracle, ours):
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout2d):
                module.p = 0.0
    try:
        expected = oracle_loss(oracle, x, labels)
        got = ours.loss(x, labels)
    finally:
        oracle.eval()
        ours.eval()
    assert set(got) == set(expected)
    assert {"decode.loss_ce", "aux_0.loss_ce", "aux_1.loss_ce"} <= set(got)
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < TOL, key
