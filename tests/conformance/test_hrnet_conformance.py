"""HRNet against MMSegmentation 1.2.2: same keys, same features (eval and train mode), same freezing, and
two FCN-HRNet zoo models end to end (encode_decode, slide inference, loss).

HRNet accepts any input size: each stride-2 conv maps n to ceil(n / 2) and the fuse layers resize the
upsampled branches to the target's size, so the odd sizes below (down to 13x17) are compared as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_features_equal,
    assert_loss_equal,
    assert_slide_equal,
    backbone_pair,
    zoo_pair,
)

from semseg.build import build

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "semseg" / "configs"
TOL = 1e-4


def _extra(block: str = "BASIC", widths: tuple[int, ...] = (4, 8, 12, 16)) -> dict:
    """A small HRNet: two modules in stages 3 and 4, one or two blocks per branch."""
    return dict(
        stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(2,), num_channels=(8,)),
        stage2=dict(num_modules=1, num_branches=2, block=block, num_blocks=(1, 2), num_channels=widths[:2]),
        stage3=dict(num_modules=2, num_branches=3, block=block, num_blocks=(1, 1, 1), num_channels=widths[:3]),
        stage4=dict(num_modules=2, num_branches=4, block=block, num_blocks=(1, 1, 1, 1), num_channels=widths),
    )


CONFIGS = {
    "basic": dict(type="HRNet", extra=_extra()),
    "single-output": dict(type="HRNet", extra=_extra(), multiscale_output=False),
    "bottleneck-branches": dict(type="HRNet", extra=_extra("BOTTLENECK", (2, 4, 6, 8))),
    "gn": dict(type="HRNet", extra=_extra(widths=(8, 12, 16, 20)), norm_cfg=dict(type="GN", num_groups=4)),
}
SIZES = [(45, 59), (13, 17)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_keys_and_features(name: str) -> None:
    oracle, ours = backbone_pair(CONFIGS[name])
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            expected, got = oracle(x), ours(x)
        assert_features_equal(got, expected, ours.out_channels)
        assert [(-(-h // s), -(-w // s)) for s in ours.out_strides] == [tuple(g.shape[2:]) for g in got]


def test_train_mode_features_and_gradients() -> None:
    """Batch statistics in both; the input gradients agree too (with_cp in ours changes nothing)."""
    cfg = CONFIGS["basic"]
    oracle, ours = backbone_pair(cfg)
    ours_cp = build("backbone", dict(cfg, with_cp=True))
    ours_cp.load_state_dict(ours.state_dict())
    oracle.train()
    results = []
    for model in (oracle, ours.train(), ours_cp.train()):
        x = torch.randn(2, 3, 45, 59, generator=torch.Generator().manual_seed(3), requires_grad=True)
        feats = model(x)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in feats).backward()
        results.append(([f.detach() for f in feats], x.grad))
    (expected, expected_grad), *rest = results
    for got, grad in rest:
        assert_features_equal(got, expected, ours.out_channels)
        assert (grad - expected_grad).abs().max().item() < TOL


def _training_norms(model: torch.nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training}


def test_frozen_stages_and_norm_eval_as_the_oracle() -> None:
    cfg = dict(CONFIGS["basic"], frozen_stages=2, norm_eval=False)
    oracle, ours = backbone_pair(cfg)
    oracle.train()
    ours.train()
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == \
           {n for n, p in oracle.named_parameters() if p.requires_grad}
    assert _training_norms(ours) == _training_norms(oracle)
    for norm_eval in (False, True):
        cfg = dict(CONFIGS["basic"], frozen_stages=4, norm_eval=norm_eval)
        oracle, ours = backbone_pair(cfg)
        oracle.train()
        ours.train()
        assert _training_norms(ours) == _training_norms(oracle)
        assert not any(p.requires_grad for p in ours.parameters())


# Zoo models: HRNetV2-W18-Small at full width, and HRNetV2-W48 (four modules in stage 3, three in stage 4,
# four blocks per branch) at reduced width, its stage widths and head channels given through cfg-options.
_NARROW = (6, 10, 14, 18)
NAMES = {
    "fcn_hr18s_4xb2-40k_cityscapes-512x1024": {},
    "fcn_hr48_4xb4-40k_pascal-context-59-480x480": {
        "model.backbone.extra.stage2.num_channels": _NARROW[:2],
        "model.backbone.extra.stage3.num_channels": _NARROW[:3],
        "model.backbone.extra.stage4.num_channels": _NARROW,
        "model.decode_head.in_channels": list(_NARROW),
        "model.decode_head.channels": sum(_NARROW),
    },
}


@pytest.fixture(scope="module", params=list(NAMES))
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    name = request.param
    return zoo_pair(CONFIG_ROOT / "hrnet" / f"{name}.py", tmp_path_factory.mktemp("ckpt"), NAMES[name])


def test_encode_decode(pair):
    assert_encode_decode_equal(*pair, size=(41, 53))


def test_slide_inference(pair):
    # windows overlap unevenly and do not divide the image
    assert_slide_equal(*pair, size=(45, 61), crop=(32, 40), stride=(19, 23))


def test_loss(pair):
    assert_loss_equal(*pair, size=(37, 51))
