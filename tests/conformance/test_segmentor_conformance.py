"""Whole zoo models against the oracle: weights handed over through a saved checkpoint, then logits
(whole and slide inference) and losses compared on odd-sized batch-2 inputs."""

from __future__ import annotations

import pytest
import torch
from oracle import (
    build_oracle_model,
    load_oracle_config,
    oracle_encode_decode,
    oracle_inference,
    oracle_loss,
    randomize_,
    save_oracle_state_dict,
)

import semseg

# Every head, every backbone variant (V1b "r50b", V1c, D8/D16, multi-grid, R-18/50/101), both Cityscapes
# crops (769x769 configs use align_corners=True), and each dataset's class count.
NAMES = [
    "fcn_r18-d8_4xb2-80k_cityscapes-512x1024",
    "fcn-d6_r50-d16_4xb2-40k_cityscapes-769x769",
    "fcn_r101-d8_4xb4-40k_pascal-context-59-480x480",
    "pspnet_r50b-d8_4xb2-80k_cityscapes-512x1024",
    "pspnet_r18-d8_4xb2-80k_cityscapes-769x769",
    "pspnet_r50-d8_4xb4-20k_coco-stuff10k-512x512",
    "pspnet_r18-d8_4xb4-80k_isaid-896x896",
    "deeplabv3_r101-d16-mg124_4xb2-40k_cityscapes-512x1024",
    "deeplabv3_r50-d8_4xb4-20k_voc12aug-512x512",
    "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-769x769",
    "deeplabv3plus_r50-d8_4xb4-80k_loveda-512x512",
    "deeplabv3plus_r101-d8_4xb4-80k_pascal-context-480x480",
    "upernet_r50_4xb2-40k_cityscapes-769x769",
    "pspnet_r101-d8_4xb4-80k_ade20k-512x512",
    "upernet_r50_4xb4-20k_voc12aug-512x512",
    # The attention heads, each once, both align_corners settings among them.
    "psanet_r50-d8_4xb2-40k_cityscapes-769x769",
    "nonlocal_r50-d8_4xb4-20k_voc12aug-512x512",
    "dnl_r50-d8_4xb2-40k_cityscapes-769x769",
    "gcnet_r50-d8_4xb4-80k_ade20k-512x512",
    "ccnet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "danet_r50-d8_4xb2-40k_cityscapes-769x769",
    "emanet_r50-d8_4xb2-80k_cityscapes-769x769",
    "ann_r50-d8_4xb4-40k_voc12aug-512x512",
]

TOL = 1e-4


def _set_dropout_off(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout2d | torch.nn.Dropout):
            module.p = 0.0


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    name = request.param
    oracle = randomize_(build_oracle_model(load_oracle_config(name).model, seed=1), seed=2)
    path = save_oracle_state_dict(oracle, tmp_path_factory.mktemp("ckpt") / f"{name}.pth")
    ours = semseg.init_model(name, checkpoint=path)  # strict: raises on any missing/unexpected key
    assert set(ours.state_dict()) == set(oracle.state_dict())
    return name, oracle, ours


def test_encode_decode(pair):
    _, oracle, ours = pair
    x = torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(0))
    expected = oracle_encode_decode(oracle, x)
    with torch.no_grad():
        got = ours.encode_decode(x)
    assert expected.abs().max() > 1e-3  # a trivial all-zero output would compare equal
    assert _max_diff(got, expected) < TOL


def test_slide_inference(pair):
    _, oracle, ours = pair
    x = torch.randn(2, 3, 71, 97, generator=torch.Generator().manual_seed(1))
    crop, stride = (48, 56), (27, 31)  # windows overlap unevenly and do not divide the image
    expected = oracle_inference(oracle, x, mode="slide", crop_size=crop, stride=stride)
    ours.test_cfg = {"mode": "slide", "crop_size": crop, "stride": stride}
    with torch.no_grad():
        got = ours.inference(x)
    assert _max_diff(got, expected) < TOL


def test_loss(pair):
    _, oracle, ours = pair
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 49, 67, generator=generator)
    num_classes = ours.num_classes
    labels = torch.randint(0, num_classes, (2, 49, 67), generator=generator)
    labels[:, :5] = 255  # an ignored band
    for model in (oracle, ours):
        model.train()
        _set_dropout_off(model)
    try:
        expected = oracle_loss(oracle, x, labels)
        got = ours.loss(x, labels)
    finally:
        oracle.eval()
        ours.eval()
    assert set(got) == set(expected)
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < TOL, key
