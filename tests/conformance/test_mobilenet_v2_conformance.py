"""MobileNetV2 and its zoo models against MMSegmentation 1.2.2: same keys, same features, logits and losses.

MobileNetV2 takes any input size (each stride-2 conv gives ceil(size / 2)); odd and even sizes are compared.
"""

from __future__ import annotations

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
D8 = dict(strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4))
BACKBONES = {
    "d8_zoo": dict(type="MobileNetV2", widen_factor=1.0, out_indices=(1, 2, 4, 6), **D8),
    "w0.5_d8_all": dict(type="MobileNetV2", widen_factor=0.5, out_indices=tuple(range(7)), **D8),
    "w0.75_gn_relu": dict(type="MobileNetV2", widen_factor=0.75, out_indices=(0, 3, 6),
                          norm_cfg=dict(type="GN", num_groups=4), act_cfg=dict(type="ReLU")),
}
# Odd and even sizes (every stride-2 conv rounds up).
CASES = [("d8_zoo", (97, 131)), ("d8_zoo", (64, 90)), ("w0.5_d8_all", (61, 45)), ("w0.75_gn_relu", (64, 90))]


@pytest.mark.parametrize(("name", "size"), CASES, ids=[f"{n}-{h}x{w}" for n, (h, w) in CASES])
def test_backbone_same_keys_and_features(name: str, size: tuple[int, int]) -> None:
    require_oracle()
    cfg = BACKBONES[name]
    torch.manual_seed(0)
    oracle = randomize_(build_oracle_module(cfg), seed=1)
    oracle.eval()
    ours = build("backbone", cfg).eval()
    theirs = oracle.state_dict()
    assert set(ours.state_dict()) == set(theirs)
    ours.load_state_dict(theirs, strict=True)

    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = oracle(x)
        got = ours(x)
    assert len(got) == len(expected) == len(ours.out_channels)
    for level, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == e.shape, f"level {level}"
        assert g.shape[1] == ours.out_channels[level]
        assert e.abs().max() > 1e-2
        assert (g - e).abs().max().item() < TOL, f"level {level}: max diff {(g - e).abs().max().item()}"


# One ADE20K model (align_corners False, 150 classes) and one Cityscapes model with the low-level branch.
NAMES = [
    "mobilenet-v2-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024",
    "mobilenet-v2-d8_pspnet_4xb4-160k_ade20k-512x512",
]
# Narrower heads (the backbone keeps its zoo width) keep each test fast; both sides get the same overrides.
HEAD_WIDTHS = {"model.decode_head.channels": 64, "model.auxiliary_head.channels": 32}


@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    require_oracle()
    name = request.param
    oracle_cfg = load_oracle_config(name, "mobilenet_v2")
    oracle_cfg.merge_from_dict(HEAD_WIDTHS)
    oracle = randomize_(build_oracle_model(oracle_cfg.model, seed=1), seed=2)
    path = save_oracle_state_dict(oracle, tmp_path_factory.mktemp("ckpt") / f"{name}.pth")
    ours = semseg.init_model(name, checkpoint=path, cfg_options=HEAD_WIDTHS)  # strict: raises on any missing/unexpected key
    assert set(ours.state_dict()) == set(oracle.state_dict())
    return oracle, ours


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_zoo_encode_decode(pair) -> None:
    oracle, ours = pair
    x = torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(0))
    expected = oracle_encode_decode(oracle, x)
    with torch.no_grad():
        got = ours.encode_decode(x)
    assert expected.abs().max() > 1e-3
    assert _max_diff(got, expected) < TOL


def test_zoo_slide_inference(pair) -> None:
    oracle, ours = pair
    x = torch.randn(2, 3, 61, 73, generator=torch.Generator().manual_seed(1))
    crop, stride = (48, 56), (27, 31)  # windows overlap unevenly and do not divide the image
    expected = oracle_inference(oracle, x, mode="slide", crop_size=crop, stride=stride)
    ours.test_cfg = {"mode": "slide", "crop_size": crop, "stride": stride}
    with torch.no_grad():
        got = ours.inference(x)
    assert _max_diff(got, expected) < TOL


def test_zoo_loss(pair) -> None:
    oracle, ours = pair
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 49, 67, generator=generator)
    labels = torch.randint(0, ours.num_classes, (2, 49, 67), generator=generator)
    labels[:, :5] = 255  # an ignored band
    for model in (oracle, ours):
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout2d | torch.nn.Dropout):
                module.p = 0.0
    try:
        expected = oracle_loss(oracle, x, labels)
        got = ours.loss(x, labels)
    finally:
        oracle.eval()
        ours.eval()
    assert set(got) == set(expected)
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < TOL, key
