"""EncNet vs MMSegmentation 1.2.2: the encoding layer, EncHead's keys, eval logits and training losses
(``loss_se`` included), and one zoo model end to end at reduced width."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_loss_equal,
    assert_slide_equal,
    head_pair,
    install_ext_stub,
    mmseg_config_dir,
    oracle_head_loss,
    replace_syncbn,
    zoo_pair,
)

from semseg.nn.encoding import Encoding

NUM_CLASSES = 5
CHANNELS = (6, 8, 12)
SIZE = (13, 17)  # the last input's size, the logits'
# A dilated ResNet's inputs share their size; the first one larger here, so that the laterals are resized.
SIZES = ((25, 33), SIZE, SIZE)
GN = dict(type="GN", num_groups=4)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "semseg" / "configs" / "encnet"


def enc(**kwargs) -> dict:
    """The decode head of the oracle's ``_base_/models/encnet_r50-d8.py`` with tiny channel counts."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(mmseg_config_dir() / "_base_" / "models" / "encnet_r50-d8.py"))
    head = replace_syncbn(cfg.model.decode_head.to_dict())
    assert head["type"] == "EncHead"
    tiny = dict(in_channels=list(CHANNELS), in_index=[0, 1, 2], channels=8, num_codes=6, num_classes=NUM_CLASSES)
    return head | tiny | kwargs


def make_feats(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, *size, generator=gen) for c, size in zip(CHANNELS, SIZES, strict=True)]


@pytest.mark.parametrize("shape", [(2, 16, 13, 17), (1, 5, 3, 1)])
def test_encoding_matches_oracle(shape: tuple[int, ...]) -> None:
    install_ext_stub()
    from mmseg.models.utils import Encoding as OracleEncoding

    n, c, h, w = shape
    torch.manual_seed(0)
    oracle = OracleEncoding(channels=c, num_codes=7)
    with torch.no_grad():  # codewords at the inputs' scale, so that the soft assignment is not one-hot
        oracle.codewords.normal_()
        oracle.scale.uniform_(-0.3, -0.05)
    ours = Encoding(channels=c, num_codes=7)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    x = torch.randn(n, c, h, w, requires_grad=True)
    expected, got = oracle(x), ours(x)
    assert got.shape == expected.shape == (n, 7, c)
    assert expected.abs().max() > 1e-2
    assert (got - expected).abs().max().item() < 1e-4
    weights = torch.randn(expected.shape)
    grads_expected = torch.autograd.grad((expected * weights).sum(), (x, oracle.codewords, oracle.scale))
    grads_got = torch.autograd.grad((got * weights).sum(), (x, ours.codewords, ours.scale))
    for g, e in zip(grads_got, grads_expected, strict=True):
        assert (g - e).abs().max().item() < 1e-4 * max(1.0, e.abs().max().item())


CASES = {
    "se": lambda: enc(),
    "se_ac": lambda: enc(align_corners=True),
    "no_se": lambda: enc(use_se_loss=False),
    "lateral": lambda: enc(add_lateral=True),
    "lateral_ac_no_se": lambda: enc(add_lateral=True, align_corners=True, use_se_loss=False),
    "lateral_gn_two_inputs": lambda: enc(add_lateral=True, norm_cfg=GN, num_codes=8, in_channels=[8, 12],
                                         in_index=[1, 2]),
}


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(CASES))
def test_eval_logits_match_oracle(name: str) -> None:
    oracle, ours = head_pair(CASES[name]())
    oracle.eval()
    ours.eval()
    feats = make_feats(2)
    with torch.no_grad():
        expected = oracle(feats)
        got = ours(feats)
    if isinstance(expected, tuple):  # with use_se_loss: (logits, class scores); inference uses the logits
        expected = expected[0]
    assert got.shape == expected.shape == (2, NUM_CLASSES, *SIZE)
    assert expected.abs().max() > 1e-2
    assert (got - expected).abs().max().item() < 1e-4


def loss_labels(seed: int) -> torch.Tensor:
    """Labels at 4x the feature size; the two images hold different classes (so the SE targets differ per
    image and class), and the first rows are ignored."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.tensor([0, 1, 3])[torch.randint(0, 3, (4 * SIZE[0], 4 * SIZE[1]), generator=gen)]
    second = torch.tensor([2, 3])[torch.randint(0, 2, (4 * SIZE[0], 4 * SIZE[1]), generator=gen)]
    labels = torch.stack([first, second])
    labels[:, :9] = 255
    return labels


SE_KEYS = {"loss_ce", "acc_seg", "loss_se"}
LOSS_CASES = {
    "se": (lambda: enc(), SE_KEYS),
    "se_lateral_ac": (lambda: enc(add_lateral=True, align_corners=True), SE_KEYS),
    "no_se": (lambda: enc(use_se_loss=False), {"loss_ce", "acc_seg"}),
    "se_weighted_gn": (lambda: enc(norm_cfg=GN, num_codes=8, loss_se_decode=dict(type="CrossEntropyLoss", use_sigmoid=True,
                                                                    loss_weight=0.7, loss_name="loss_x")),
                       SE_KEYS),
}


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_train_loss_matches_oracle(name: str) -> None:
    install_ext_stub()
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead

    make_cfg, keys = LOSS_CASES[name]
    oracle, ours = head_pair(make_cfg(), seed=3)
    for head in (oracle, ours):
        head.train()  # BatchNorm on batch statistics in both
        head.dropout.eval()
    if not oracle.use_se_loss:  # see test_oracle_cannot_train_without_se_loss
        oracle.loss_by_feat = types.MethodType(BaseDecodeHead.loss_by_feat, oracle)
    labels = loss_labels(4)
    feats = make_feats(5)
    expected = oracle_head_loss(oracle, feats, labels)
    got = ours.loss(feats, labels)
    assert set(got) == set(expected) == keys
    for key in expected:
        assert (got[key] - expected[key]).abs().max().item() < 1e-4, key
    if "loss_se" in keys:
        assert expected["loss_se"] > 1e-3


@pytest.mark.filterwarnings("ignore:.*avg_non_ignore")
def test_oracle_cannot_train_without_se_loss() -> None:
    """MMSegmentation's EncHead unpacks (logits, class scores) in its loss even with use_se_loss=False, so it
    fails; ours trains on the logits alone (compared above with the oracle's plain decode-head loss)."""
    oracle, ours = head_pair(enc(use_se_loss=False))
    feats, labels = make_feats(5), loss_labels(4)
    with pytest.raises(ValueError):
        oracle_head_loss(oracle, feats, labels)
    assert set(ours.loss(feats, labels)) == {"loss_ce", "acc_seg"}


# ResNet-18-V1c at a quarter of its width: stages give 16, 32, 64, 128 channels.
NAME = "encnet_r50-d8_4xb2-40k_cityscapes-769x769"  # align_corners=True, slide inference
SMALL = {
    "model.backbone.depth": 18,
    "model.backbone.stem_channels": 16,
    "model.backbone.base_channels": 16,
    "model.decode_head.in_channels": [32, 64, 128],
    "model.decode_head.channels": 16,
    "model.decode_head.num_codes": 8,
    "model.auxiliary_head.in_channels": 64,
    "model.auxiliary_head.channels": 8,
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return zoo_pair(CONFIG_DIR / f"{NAME}.py", tmp_path_factory.mktemp("ckpt"), SMALL)


def test_zoo_encode_decode(pair) -> None:
    assert_encode_decode_equal(*pair)


def test_zoo_slide_inference(pair) -> None:
    assert_slide_equal(*pair, size=(71, 97), crop=(48, 56), stride=(27, 31))


def test_zoo_loss(pair) -> None:
    losses = assert_loss_equal(*pair)
    assert {"decode.loss_se", "decode.loss_ce", "aux.loss_ce"} <= set(losses)
