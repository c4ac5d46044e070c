"""SETR vs MMSegmentation 1.2.2: SETRUPHead (naive and PUP), SETRMLAHead and MLANeck (keys, eval logits, head
training losses), and one naive, one PUP and one MLA zoo model end to end at reduced depth and width.

The ViT-L models themselves (300M parameters) are compared on keys and shapes only, on the meta device, by the
zoo key fixture; here the backbone is 32 wide with 4 layers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_features_equal,
    assert_loss_equal,
    assert_slide_equal,
    build_oracle_module,
    head_pair,
    max_diff,
    oracle_head_loss,
    randomize_,
    zoo_pair,
)
from torch import nn

from semseg.build import build

pytestmark = pytest.mark.filterwarnings("ignore:.*align_corners")

NUM_CLASSES = 5
BN = dict(type="BN", requires_grad=True)
LOSS = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)
CHANNELS = (16, 16, 16, 16)
SIZE = (7, 9)  # a ViT map of a 97x131 image (stride 16, padded)


def up_head(**kwargs) -> dict:
    """A small SETRUPHead reading input 3; kwargs as the zoo's decode / auxiliary heads set them."""
    return dict(type="SETRUPHead", in_channels=16, channels=8, in_index=3, num_classes=NUM_CLASSES, dropout_ratio=0,
                norm_cfg=BN, align_corners=False, loss_decode=LOSS) | kwargs


def mla_head(**kwargs) -> dict:
    return dict(type="SETRMLAHead", in_channels=CHANNELS, channels=24, in_index=(0, 1, 2, 3), dropout_ratio=0,
                mla_channels=6, num_classes=NUM_CLASSES, norm_cfg=BN, align_corners=False, loss_decode=LOSS) | kwargs


HEADS = {
    "naive": up_head(num_convs=1, up_scale=4, kernel_size=1),
    "naive_aux_ade": up_head(in_index=0, num_convs=2, kernel_size=1, act_cfg=dict(type="ReLU")),
    "pup": up_head(num_convs=4, up_scale=2, kernel_size=3),
    "pup_ac": up_head(num_convs=4, up_scale=2, kernel_size=3, align_corners=True),
    "pup_aux_ac_no_norm": up_head(in_index=1, num_convs=2, up_scale=3, norm_cfg=None, align_corners=True),
    "up_ln_eps": up_head(norm_layer=dict(type="LN", eps=1e-3), up_scale=1.5),  # floored sizes 10x13
    "mla": mla_head(),
    "mla_ac_scale3": mla_head(up_scale=3, align_corners=True),
    "mla_two_inputs": mla_head(in_channels=(16, 16), in_index=(1, 3), channels=12),
}


def features(seed: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, *SIZE, generator=gen) for c in CHANNELS]


@pytest.mark.parametrize("name", list(HEADS))
def test_head_logits_match_oracle(name: str) -> None:
    oracle, ours = head_pair(HEADS[name])
    oracle.eval(), ours.eval()
    feats = features()
    with torch.no_grad():
        expected, got = oracle(feats), ours(feats)
    assert got.shape == expected.shape
    assert expected.abs().max() > 1e-2
    assert max_diff(got, expected) < 1e-4


@pytest.mark.parametrize("name", ["naive_aux_ade", "pup_ac", "mla", "mla_ac_scale3"])
def test_head_training_loss_matches_oracle(name: str) -> None:
    """Train mode (batch statistics), labels at an odd image size with ignored pixels."""
    oracle, ours = head_pair(HEADS[name])
    feats = features()
    labels = torch.randint(0, NUM_CLASSES, (2, 97, 131), generator=torch.Generator().manual_seed(3))
    labels[:, :7] = 255
    expected = oracle_head_loss(oracle, feats, labels)
    got = ours.loss(feats, labels)
    assert set(got) == set(expected) == {"loss_ce", "acc_seg"}
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < 1e-4, key


@pytest.mark.parametrize(("norm_cfg", "act_cfg", "in_channels"), [
    (BN, dict(type="ReLU"), [16, 16, 16, 16]),  # as the zoo sets it
    (None, None, [16, 8, 12]),  # the defaults; uneven input widths
])
def test_mla_neck_matches_oracle(norm_cfg: dict | None, act_cfg: dict | None, in_channels: list[int]) -> None:
    cfg = dict(type="MLANeck", in_channels=in_channels, out_channels=8, norm_cfg=norm_cfg, act_cfg=act_cfg)
    torch.manual_seed(0)
    oracle = randomize_(build_oracle_module(cfg), seed=1).eval()
    ours = build("neck", copy.deepcopy(cfg)).eval()
    theirs = oracle.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    gen = torch.Generator().manual_seed(2)
    inputs = [torch.randn(2, c, *SIZE, generator=gen) for c in in_channels]
    with torch.no_grad():
        expected, got = oracle(inputs), ours(inputs)
    assert_features_equal(got, list(expected), [8] * len(in_channels), tol=1e-4)


# Zoo models at reduced size: ViT 32 wide, 2 heads, 4 layers (every layer an output), heads 16 wide. The
# 512x512 (ADE20K) or 768x768 (Cityscapes) position grid is resized (bilinear) for every input here.
def _small(num_aux: int, aux_in: int) -> dict:
    options = {
        "model.backbone.embed_dims": 32, "model.backbone.num_heads": 2, "model.backbone.num_layers": 4,
        "model.backbone.out_indices": (0, 1, 2, 3),
    }
    for i in range(num_aux):
        options |= {f"model.auxiliary_head.{i}.in_channels": aux_in, f"model.auxiliary_head.{i}.channels": 16}
    return options


ZOO = {
    "setr_vit-l_naive_8xb2-160k_ade20k-512x512": _small(3, 32) | {
        "model.decode_head.in_channels": 32, "model.decode_head.channels": 16},
    "setr_vit-l_pup_8xb1-80k_cityscapes-768x768": _small(3, 32) | {
        "model.decode_head.in_channels": 32, "model.decode_head.channels": 16},
    "setr_vit-l-mla_8xb1-160k_ade20k-512x512": _small(4, 16) | {
        "model.neck.in_channels": [32, 32, 32, 32], "model.neck.out_channels": 16,
        "model.decode_head.in_channels": (16, 16, 16, 16), "model.decode_head.channels": 32,
        "model.decode_head.mla_channels": 8},
}


def _randomize_backbone_(model: nn.Module, seed: int) -> None:
    """Every backbone parameter from N(0, 0.3) (zero-initialised attention biases would hide a misplaced one),
    norms then as ``randomize_`` sets them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    randomize_(model.backbone, seed=seed + 1)


@pytest.fixture(scope="module", params=list(ZOO))
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights."""
    oracle, ours = zoo_pair(request.param, tmp_path_factory.mktemp("ckpt"), ZOO[request.param], method="setr")
    _randomize_backbone_(oracle, seed=7)
    ours.backbone.load_state_dict(oracle.backbone.state_dict(), strict=True)
    return oracle, ours


def test_zoo_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair)


def test_zoo_slide_inference(pair) -> None:
    # windows overlap unevenly and do not divide the image; 16x16 patches do not divide the windows
    assert_slide_equal(*pair, size=(61, 73), crop=(40, 56), stride=(27, 31))


def test_zoo_loss(pair) -> None:
    losses = assert_loss_equal(*pair)
    assert {"decode.loss_ce", "aux_0.loss_ce", "aux_2.loss_ce"} <= set(losses)
