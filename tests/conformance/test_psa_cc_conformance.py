"""PSAHead and CCHead vs MMSegmentation 1.2.2: same keys, same logits, same head loss.

The oracle's PSAHead runs mmcv's PSAMask on the conftest's ``mmcv._ext`` stand-in (a loop written from the
operator's definition, tests/conformance/oracle.py); its CCHead runs mmcv's CrissCrossAttention, which is
plain torch in mmcv-lite, so no stand-in is involved there.
"""

from __future__ import annotations

import copy

import pytest
import torch
from oracle import mmseg_config_dir, randomize_, replace_syncbn

from semseg.build import build

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


def build_pair(cfg: dict, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Oracle head with random weights and norm statistics, and ours with its state dict (strict)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    torch.manual_seed(seed)
    oracle = randomize_(MODELS.build(copy.deepcopy(cfg)), seed=seed + 1)
    if hasattr(oracle, "cca"):
        with torch.no_grad():
            oracle.cca.gamma.scale.fill_(0.8)  # 0 at init would make the attention the identity
    ours = build("head", copy.deepcopy(cfg))
    state = oracle.state_dict()
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)
    return oracle, ours


def features(size: tuple[int, int], seed: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, IN_CHANNELS, *size, generator=gen)]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_oracle(name: str) -> None:
    cfg, size = CASES[name]
    oracle, ours = build_pair(cfg)
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
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    cfg, size = CASES[name]
    oracle, ours = build_pair({**cfg, "dropout_ratio": 0.0})
    oracle.train()
    ours.train()
    feats = features(size)
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, NUM_CLASSES, (2, 4 * size[0] + 1, 4 * size[1] - 3), generator=gen)
    labels[:, :5, :7] = 255
    samples = []
    for label in labels:
        sample = SegDataSample(metainfo=dict(img_shape=tuple(label.shape), ori_shape=tuple(label.shape)))
        sample.gt_sem_seg = PixelData(data=label[None])
        samples.append(sample)

    expected = oracle.loss(feats, samples, train_cfg={})
    got = ours.loss(feats, labels)
    assert set(got) == set(expected) == {"loss_ce", "acc_seg"}
    for key in got:
        assert (got[key] - expected[key]).abs().item() < 1e-4, key
