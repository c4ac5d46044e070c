"""APCHead and DMHead vs MMSegmentation 1.2.2: state-dict keys, eval logits, training losses, and one zoo model
of each method end to end at reduced width."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from oracle import (
    assert_encode_decode_equal,
    assert_loss_equal,
    assert_slide_equal,
    head_pair,
    mmseg_config_dir,
    oracle_head_loss,
    replace_syncbn,
    zoo_pair,
)

NUM_CLASSES = 5
SIZE = (13, 17)
GN = dict(type="GN", num_groups=2)
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "semseg" / "configs"


@cache
def oracle_decode_head(model_file: str) -> dict:
    """The decode head config of the oracle's ``_base_/models/<model_file>.py`` (SyncBN as BN)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(mmseg_config_dir() / "_base_" / "models" / f"{model_file}.py"))
    return replace_syncbn(cfg.model.decode_head.to_dict())


def base_head(model_file: str, type_name: str, **kwargs) -> dict:
    """That head, tiny, reading input 1 (6 channels)."""
    head = oracle_decode_head(model_file)
    assert head["type"] == type_name
    return head | dict(in_channels=6, in_index=1, channels=4, num_classes=NUM_CLASSES) | kwargs


def apc(**kwargs) -> dict:
    return base_head("apcnet_r50-d8", "APCHead", **kwargs)


def dm(**kwargs) -> dict:
    return base_head("dmnet_r50-d8", "DMHead", **kwargs)


CASES = {
    "apc": lambda: apc(),  # fusion=True by default
    "apc_ac_no_fusion": lambda: apc(align_corners=True, fusion=False),
    "apc_gn_big_scales": lambda: apc(pool_scales=(2, 8, 15), norm_cfg=GN),  # 15 > 13: overlapping bins
    "apc_no_norm": lambda: apc(norm_cfg=None, pool_scales=(1, 3)),
    "dm": lambda: dm(),  # fusion=False by default
    "dm_ac_fusion": lambda: dm(align_corners=True, fusion=True),
    "dm_even_sizes": lambda: dm(filter_sizes=(2, 4, 6)),  # asymmetric padding
    "dm_gn_big_filter": lambda: dm(filter_sizes=(3, 14), norm_cfg=GN, fusion=True),  # 14 > 13
    "dm_no_norm": lambda: dm(norm_cfg=None, filter_sizes=(1, 4)),
}


def make_feats(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, *SIZE, generator=gen) for c in (3, 6)]


@pytest.mark.parametrize("name", list(CASES))
def test_eval_logits_match_oracle(name: str) -> None:
    oracle, ours = head_pair(CASES[name]())
    oracle.eval()
    ours.eval()
    feats = make_feats(2)
    with torch.no_grad():
        expected, got = oracle(feats), ours(feats)
    assert got.shape == expected.shape == (2, NUM_CLASSES, *SIZE)
    assert expected.abs().max() > 1e-2
    assert (got - expected).abs().max().item() < 1e-4


LOSS_CASES = ["apc", "apc_ac_no_fusion", "dm", "dm_ac_fusion", "dm_even_sizes"]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", LOSS_CASES)
def test_train_loss_matches_oracle(name: str) -> None:
    oracle, ours = head_pair(CASES[name](), seed=3)
    for head in (oracle, ours):
        head.train()  # BatchNorm on batch statistics in both
        head.dropout.eval()  # dropout off
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, NUM_CLASSES, (2, 8 * SIZE[0], 8 * SIZE[1]), generator=gen)
    labels[:, :9] = 255
    feats = make_feats(5)
    expected = oracle_head_loss(oracle, feats, labels)
    got = ours.loss(feats, labels)
    assert set(got) == set(expected) == {"loss_ce", "acc_seg"}
    for key in expected:
        assert (got[key] - expected[key]).abs().max().item() < 1e-4, key


# ResNet-50-D8 at 1/8 width: stage outputs 32, 64, 128, 256 channels.
_NARROW = {
    "model.backbone.stem_channels": 8,
    "model.backbone.base_channels": 8,
    "model.decode_head.in_channels": 256,
    "model.decode_head.channels": 16,
    "model.auxiliary_head.in_channels": 128,
    "model.auxiliary_head.channels": 8,
}
ZOO = {
    "apcnet": "apcnet_r50-d8_4xb2-40k_cityscapes-769x769",  # align_corners=True
    "dmnet": "dmnet_r50-d8_4xb4-80k_ade20k-512x512",  # 150 classes, align_corners=False
}


@pytest.fixture(scope="module", params=list(ZOO))
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    method = request.param
    return zoo_pair(CONFIG_ROOT / method / f"{ZOO[method]}.py", tmp_path_factory.mktemp("ckpt"), _NARROW)


@pytest.mark.filterwarnings("ignore:.*align_corners")
def test_encode_decode(pair):
    assert_encode_decode_equal(*pair, size=(41, 53))


@pytest.mark.filterwarnings("ignore:.*align_corners")
def test_slide_inference(pair):
    # windows overlap unevenly and do not divide the image
    assert_slide_equal(*pair, size=(45, 61), crop=(32, 40), stride=(19, 23))


@pytest.mark.filterwarnings("ignore:.*align_corners")
def test_loss(pair):
    assert_loss_equal(*pair, size=(37, 51))
