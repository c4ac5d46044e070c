"""EMAHead vs MMSegmentation 1.2.2: keys (the bases buffer included), logits, head loss, running bases."""

from __future__ import annotations

import copy

import pytest
import torch
from oracle import mmseg_config_dir, randomize_, replace_syncbn

from semseg.build import build

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


def build_pair(cfg: dict, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    torch.manual_seed(seed)
    oracle = randomize_(MODELS.build(copy.deepcopy(cfg)), seed=seed + 1)
    ours = build("head", copy.deepcopy(cfg))
    state = oracle.state_dict()
    assert set(ours.state_dict()) == set(state)
    assert "ema_module.bases" in state
    ours.load_state_dict(state, strict=True)
    return oracle, ours


def make_feats(seed: int) -> list[torch.Tensor]:
    return [torch.randn(2, IN_CHANNELS, *SIZE, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("concat_input", [True, False])
def test_eval_logits_match_oracle(align_corners: bool, concat_input: bool) -> None:
    cfg = base_cfg() | dict(type="EMAHead", align_corners=align_corners, concat_input=concat_input)
    oracle, ours = build_pair(cfg)
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


def oracle_head_loss(head: torch.nn.Module, feats: list[torch.Tensor], labels: torch.Tensor) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for i in range(labels.shape[0]):
        sample = SegDataSample(metainfo=dict(img_shape=tuple(labels.shape[1:]), ori_shape=tuple(labels.shape[1:])))
        sample.gt_sem_seg = PixelData(data=labels[i:i + 1])
        samples.append(sample)
    return dict(head.loss(feats, samples, train_cfg={}))


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("concat_input", [True, False])
def test_train_loss_and_bases_match_oracle(align_corners: bool, concat_input: bool) -> None:
    cfg = base_cfg() | dict(align_corners=align_corners, concat_input=concat_input, dropout_ratio=0.0,
                            num_stages=3, momentum=0.2)
    oracle, ours = build_pair(cfg, seed=3)
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
