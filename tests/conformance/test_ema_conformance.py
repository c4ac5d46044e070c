"""EMAHead vs MMSegmentation 1.2.2: keys (the bases buffer included), logits, head loss, running bases."""

from __future__ import annotations

import pytest
import torch
from oracle import head_pair, mmseg_config_dir, oracle_head_loss, replace_syncbn

IN_CHANNELS = 12
SIZE = (13, 17)


def base_cfg() -> dict:
    """The decode head of the oracle's ``_base_/models/emanet_r50-d8.py``, with tiny channel counts."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(mmseg_config_dir() / "_base_" / "models" / "emanet_r50-d8.py"))
    head = replace_syncbn(cfg.model.decode_head.to_dict())
    assert head["type"] == "EMAHead"
    head.update(in_channels=IN_CHANNELS, in_index=0, channels=8, ema_channels=10, num_bases=6, num_classes=5)
    return head


def make_feats(seed: int) -> list[torch.Tensor]:
    return [torch.randn(2, IN_CHANNELS, *SIZE, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("concat_input", [True, False])
def test_eval_logits_match_oracle(align_corners: bool, concat_input: bool) -> None:
    cfg = base_cfg() | dict(type="EMAHead", align_corners=align_corners, concat_input=concat_input)
    oracle, ours = head_pair(cfg)
    assert "ema_module.bases" in oracle.state_dict()  # the running bases are a buffer, so they load
    oracle.eval()
    ours.eval()
    feats = make_feats(2)
    with torch.no_grad():
        expected = oracle(feats)
        got = ours(feats)
    assert got.shape == expected.shape == (2, 5, *SIZE)
    assert expected.abs().max() > 1e-2
    assert (got - expected).abs().max().item() < 1e-4
    assert torch.equal(ours.ema_module.bases, oracle.ema_module.bases)


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("concat_input", [True, False])
def test_train_loss_and_bases_match_oracle(align_corners: bool, concat_input: bool) -> None:
    cfg = base_cfg() | dict(align_corners=align_corners, concat_input=concat_input, dropout_ratio=0.0,
                            num_stages=3, momentum=0.2)
    oracle, ours = head_pair(cfg, seed=3)
    assert "ema_module.bases" in oracle.state_dict()
    oracle.train()
    ours.train()
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 5, (2, 25, 33), generator=gen)
    labels[:, :3] = 255
    initial = ours.ema_module.bases.clone()
    for step in range(2):
        feats = make_feats(10 + step)
        expected = oracle_head_loss(oracle, feats, labels)
        got = ours.loss(feats, labels)
        assert set(got) == set(expected) == {"loss_ce", "acc_seg"}
        for key in expected:
            assert (got[key] - expected[key]).abs().max().item() < 1e-4, key
        assert (ours.ema_module.bases - oracle.ema_module.bases).abs().max().item() < 1e-6
        assert not torch.allclose(ours.ema_module.bases, initial, atol=1e-3)
        initial = ours.ema_module.bases.clone()
