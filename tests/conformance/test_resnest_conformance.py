"""ResNeSt against MMSegmentation 1.2.2: the backbone (keys, features) and two zoo models end to end.

The backbone accepts any input size (every downsampling rounds up, as the oracle's), so the inputs are odd.
The zoo models run at reduced width (ResNeSt-50, 16 base channels, narrow heads) through the same
``cfg_options`` on both sides; their configs are otherwise the zoo's.
"""

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
CONFIG_DIR = Path(semseg.__file__).parent / "configs" / "resnest"
SMALL = dict(stem_channels=32, base_channels=16)
D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True)
BACKBONES = {
    "s50-d8": dict(type="ResNeSt", depth=50, radix=2, reduction_factor=4, avg_down_stride=True, **SMALL, **D8),
    "s50-radix4-groups2-caffe": dict(type="ResNeSt", depth=50, radix=4, groups=2, reduction_factor=2,
                                     style="caffe", out_indices=(1, 3), **SMALL),
    "s50-radix1-groups2-gn-no-avd": dict(type="ResNeSt", depth=50, radix=1, groups=2, base_width=8,
                                         avg_down_stride=False, norm_cfg=dict(type="GN", num_groups=4), **SMALL),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_same_keys_and_features(name: str) -> None:
    require_oracle()
    cfg = BACKBONES[name]
    torch.manual_seed(0)
    oracle = randomize_(build_oracle_module(cfg), seed=1)
    oracle.eval()  # the oracle's ResNet.train returns None
    ours = build("backbone", dict(cfg)).eval()
    state = oracle.state_dict()
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)

    x = torch.randn(2, 3, 61, 83, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert len(got) == len(expected) == len(ours.out_channels)
    for level, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == e.shape and g.shape[1] == ours.out_channels[level], f"level {level}"
        assert e.abs().max() > 1e-2
        assert (g - e).abs().max().item() < TOL, f"level {level}: max diff {(g - e).abs().max().item()}"


# Zoo models at reduced width: the same options on both sides (dotted keys as --cfg-options).
NARROW_BACKBONE = {"model.backbone.depth": 50, "model.backbone.stem_channels": 32,
                   "model.backbone.base_channels": 16, "model.auxiliary_head.in_channels": 256,
                   "model.auxiliary_head.channels": 16}
ZOO = {
    "resnest_s101-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024": {
        **NARROW_BACKBONE, "model.decode_head.in_channels": 512, "model.decode_head.channels": 32,
        "model.decode_head.c1_in_channels": 64, "model.decode_head.c1_channels": 12},
    "resnest_s101-d8_pspnet_4xb4-160k_ade20k-512x512": {
        **NARROW_BACKBONE, "model.decode_head.in_channels": 512, "model.decode_head.channels": 32},
}

SLIDE = {"resnest_s101-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024"}


def _set_dropout_off(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout2d | torch.nn.Dropout):
            module.p = 0.0


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=list(ZOO))
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) of a narrowed zoo config, same random weights and norm statistics."""
    require_oracle()
    name = request.param
    cfg = load_oracle_config(name, "resnest")
    cfg.merge_from_dict(ZOO[name])
    oracle = randomize_(build_oracle_model(cfg.model, seed=1), seed=2)
    path = save_oracle_state_dict(oracle, tmp_path_factory.mktemp("ckpt") / f"{name}.pth")
    ours = semseg.init_model(CONFIG_DIR / f"{name}.py", checkpoint=path, cfg_options=ZOO[name])
    assert type(ours.backbone).__name__ == "ResNeSt"
    assert set(ours.state_dict()) == set(oracle.state_dict())
    return name, oracle, ours


def test_zoo_encode_decode(pair):
    _, oracle, ours = pair
    x = torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(0))
    expected = oracle_encode_decode(oracle, x)
    with torch.no_grad():
        got = ours.encode_decode(x)
    assert expected.abs().max() > 1e-3  # a trivial all-zero output would compare equal
    assert _max_diff(got, expected) < TOL


def test_zoo_slide_inference(pair):
    name, oracle, ours = pair
    if name not in SLIDE:
        pytest.skip("slide inference is compared on the DeepLabV3+ model only (time)")
    x = torch.randn(2, 3, 71, 97, generator=torch.Generator().manual_seed(1))
    crop, stride = (48, 56), (27, 31)  # windows overlap unevenly and do not divide the image
    expected = oracle_inference(oracle, x, mode="slide", crop_size=crop, stride=stride)
    ours.test_cfg = {"mode": "slide", "crop_size": crop, "stride": stride}
    with torch.no_grad():
        got = ours.inference(x)
    assert _max_diff(got, expected) < TOL


def test_zoo_loss(pair):
    _, oracle, ours = pair
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 49, 67, generator=generator)
    labels = torch.randint(0, ours.num_classes, (2, 49, 67), generator=generator)
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
