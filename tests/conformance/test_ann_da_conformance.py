"""ANNHead and DAHead vs MMSegmentation 1.2.2: state-dict keys, eval logits, and training losses (DANet's six)."""

from __future__ import annotations

import pytest
import torch
from oracle import build_oracle_module, head_pair, mmseg_config_dir, oracle_head_loss, replace_syncbn

from semseg.build import build

NUM_CLASSES = 5
SIZE = (13, 17)  # both ANN inputs share it, as stages 3 and 4 of a dilated ResNet do
LOW, HIGH = 12, 16
GN = dict(type="GN", num_groups=4)
# ANN's out projections and DANet's gamma start at zero, which would leave the attention paths untested:
# randomize_ draws their weights, and head_pair(zero_std=...) the out projections' biases.
ZERO_STD = 0.5


def base_head(model_file: str, type_name: str, **tiny) -> dict:
    """The decode head of the oracle's ``_base_/models/<model_file>.py``, with tiny channel counts."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(mmseg_config_dir() / "_base_" / "models" / f"{model_file}.py"))
    head = replace_syncbn(cfg.model.decode_head.to_dict())
    assert head["type"] == type_name
    return head | dict(channels=8, num_classes=NUM_CLASSES) | tiny


def ann(**kwargs) -> dict:
    return base_head("ann_r50-d8", "ANNHead", in_channels=[LOW, HIGH], in_index=[0, 1], project_channels=4) | kwargs


def da(**kwargs) -> dict:
    return base_head("danet_r50-d8", "DAHead", in_channels=HIGH, in_index=1, pam_channels=4) | kwargs


CASES = {
    "ann": lambda: ann(),
    "ann_ac": lambda: ann(align_corners=True),
    "ann_two_stages_small_pyramid": lambda: ann(query_scales=(1, 1), key_pool_scales=(1, 2)),
    "ann_gn_big_pyramid": lambda: ann(key_pool_scales=(2, 6, 16), norm_cfg=GN),  # 16 > 13: overlapping bins
    "da": lambda: da(),
    "da_ac": lambda: da(align_corners=True),
    "da_gn": lambda: da(norm_cfg=GN, pam_channels=2),
}


def make_feats(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, *SIZE, generator=gen) for c in (LOW, HIGH)]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(CASES))
def test_eval_logits_match_oracle(name: str) -> None:
    oracle, ours = head_pair(CASES[name](), zero_std=ZERO_STD)
    oracle.eval()
    ours.eval()
    feats = make_feats(2)
    with torch.no_grad():
        expected = oracle(feats)
        got = ours(feats)
        if isinstance(expected, tuple):  # DAHead: (pam_cam, pam, cam); inference uses pam_cam
            expected = expected[0]
    assert got.shape == expected.shape == (2, NUM_CLASSES, *SIZE)
    assert expected.abs().max() > 1e-2
    assert (got - expected).abs().max().item() < 1e-4


DA_KEYS = {f"{p}.{k}" for p in ("pam_cam", "pam", "cam") for k in ("loss_ce", "acc_seg")}
LOSS_CASES = {
    "ann": (lambda: ann(), {"loss_ce", "acc_seg"}),
    "ann_ac_two_stages": (lambda: ann(align_corners=True, query_scales=(1, 1), key_pool_scales=(1, 3)),
                          {"loss_ce", "acc_seg"}),
    "da": (lambda: da(), DA_KEYS),
    "da_ac": (lambda: da(align_corners=True), DA_KEYS),
    "da_two_losses": (lambda: da(loss_decode=[dict(type="CrossEntropyLoss", loss_weight=1.0),
                                              dict(type="CrossEntropyLoss", loss_weight=0.4, loss_name="loss_x",
                                                   avg_non_ignore=True)]),
                      DA_KEYS | {"pam_cam.loss_x", "pam.loss_x", "cam.loss_x"}),
}


@pytest.mark.filterwarnings("ignore:.*align_corners", "ignore:.*avg_non_ignore")
@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_train_loss_matches_oracle(name: str) -> None:
    make_cfg, keys = LOSS_CASES[name]
    oracle, ours = head_pair(make_cfg(), seed=3, zero_std=ZERO_STD)
    for head in (oracle, ours):
        head.train()  # BatchNorm on batch statistics in both
        head.dropout.eval()  # dropout off (MMSegmentation's ANNHead fails with dropout_ratio=0)
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, NUM_CLASSES, (2, 8 * SIZE[0], 8 * SIZE[1]), generator=gen)
    labels[:, :9] = 255
    feats = make_feats(5)
    expected = oracle_head_loss(oracle, feats, labels)
    got = ours.loss(feats, labels)
    assert set(got) == set(expected) == keys
    for key in expected:
        assert (got[key] - expected[key]).abs().max().item() < 1e-4, key


def test_ann_query_scale_above_one_fails_in_both() -> None:
    """MMSegmentation builds it but fails in forward (the pooled query's context cannot be fused with the
    full-size input); we refuse it when building."""
    cfg = ann(query_scales=(2,))
    oracle = build_oracle_module(cfg).eval()
    with pytest.raises(RuntimeError), torch.no_grad():
        oracle(make_feats(0))
    with pytest.raises(ValueError, match="query_scales"):
        build("head", cfg)
