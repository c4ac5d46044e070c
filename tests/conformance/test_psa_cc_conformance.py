"""PSAHead and CCHead vs MMSegmentation 1.2.2: same keys, same logits, same head loss.

The oracle's PSAHead runs mmcv's PSAMask on the conftest's ``mmcv._ext`` stand-in (a loop written from the
operator's definition, tests/conformance/oracle.py); its CCHead runs mmcv's CrissCrossAttention, which is
plain torch in mmcv-lite, so no stand-in is involved there.
"""

from __future__ import annotations

import pytest
import torch
from oracle import head_pair, mmseg_config_dir, oracle_head_loss, replace_syncbn

IN_CHANNELS = 12
NUM_CLASSES = 5


def base_head(model: str, **kwargs) -> dict:
    """The decode head of the oracle's ``_base_/models/<model>.py``, with tiny channel counts."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(mmseg_config_dir() / "_base_" / "models" / f"{model}.py"))
    head = replace_syncbn(cfg.model.decode_head.to_dict())
    head.update(in_channels=IN_CHANNELS, in_index=0, channels=8, num_classes=NUM_CLASSES)
    head.update(kwargs)
    return head


def psa(**kwargs) -> dict:
    cfg = base_head("psanet_r50-d8", **kwargs)
    assert cfg["type"] == "PSAHead"
    return cfg


def cc(**kwargs) -> dict:
    cfg = base_head("ccnet_r50-d8", **kwargs)
    assert cfg["type"] == "CCHead"
    return cfg


# name: (head config, input size). A 9x11 map shrinks by 2 to 5x6 (align_corners=True, as both sides are
# odd); 10x12 and 9x12 shrink to 5x6 and 4x6 with align_corners=False.
CASES = {
    "psa_bi": (psa(mask_size=(9, 9)), (9, 11)),
    "psa_bi_ac_even": (psa(mask_size=(9, 9), align_corners=True), (10, 12)),
    "psa_bi_no_softmax": (psa(mask_size=(7, 5), psa_softmax=False, normalization_factor=None), (9, 12)),
    "psa_collect_no_shrink": (psa(mask_size=(9, 9), psa_type="collect", shrink_factor=1), (9, 11)),
    "psa_collect_no_shrink_ac": (psa(mask_size=(9, 9), psa_type="collect", shrink_factor=1,
                                     align_corners=True), (9, 11)),
    "psa_collect_big_mask": (psa(mask_size=(25, 27), psa_type="collect"), (9, 12)),
    "psa_distribute": (psa(mask_size=(9, 9), psa_type="distribute"), (9, 11)),
    "psa_distribute_big_mask_no_shrink": (psa(mask_size=(23, 21), psa_type="distribute", shrink_factor=1,
                                              psa_softmax=False, align_corners=True), (9, 11)),
    "psa_compact_collect": (psa(mask_size=(5, 6), psa_type="collect", compact=True), (9, 11)),
    "psa_compact_distribute_no_shrink": (psa(mask_size=(9, 11), psa_type="distribute", compact=True,
                                             shrink_factor=1), (9, 11)),
    "psa_compact_bi": (psa(mask_size=(5, 6), compact=True, psa_softmax=False), (10, 12)),
    "psa_compact_bi_ac": (psa(mask_size=(6, 5), compact=True, align_corners=True), (9, 11)),
    "cc_recurrence_2": (cc(), (9, 11)),
    "cc_recurrence_1_ac": (cc(recurrence=1, align_corners=True), (9, 11)),
    "cc_no_concat": (cc(recurrence=2, concat_input=False), (7, 13)),
}


def features(size: tuple[int, int], seed: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, IN_CHANNELS, *size, generator=gen)]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_oracle(name: str) -> None:
    cfg, size = CASES[name]
    oracle, ours = head_pair(cfg)  # randomize_ gives CCNet's gamma (0 at init) a value in [0.5, 1.5]
    oracle.eval()
    ours.eval()
    feats = features(size)
    with torch.no_grad():
        expected = oracle(feats)
        got = ours(feats)
    assert got.shape == expected.shape == (2, NUM_CLASSES, *size)
    assert expected.abs().max() > 1e-2  # a comparison of near-zero logits would prove nothing
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.filterwarnings("ignore:.*avg_non_ignore")
@pytest.mark.parametrize("name", ["psa_bi", "psa_collect_no_shrink_ac", "psa_compact_bi", "psa_distribute",
                                  "cc_recurrence_2", "cc_recurrence_1_ac"])
def test_head_loss_matches_oracle(name: str) -> None:
    """Train mode (batch statistics), dropout off, labels larger than the logits with ignored pixels."""
    cfg, size = CASES[name]
    oracle, ours = head_pair({**cfg, "dropout_ratio": 0.0})
    oracle.train()
    ours.train()
    feats = features(size)
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, NUM_CLASSES, (2, 4 * size[0] + 1, 4 * size[1] - 3), generator=gen)
    labels[:, :5, :7] = 255
    expected = oracle_head_loss(oracle, feats, labels)
    got = ours.loss(feats, labels)
    assert set(got) == set(expected) == {"loss_ce", "acc_seg"}
    for key in got:
        assert (got[key] - expected[key]).abs().item() < 1e-4, key
