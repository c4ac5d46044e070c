"""ANNHead and DAHead vs MMSegmentation 1.2.2: state-dict keys, eval logits, and training losses (DANet's six)."""

from __future__ import annotations

import copy

import pytest
import torch
from oracle import mmseg_config_dir, randomize_, replace_syncbn

from semseg.build import build

NUM_CLASSES = 5
SIZE = (13, 17)  # both ANN inputs share it, as stages 3 and 4 of a dilated ResNet do
LOW, HIGH = 12, 16
GN = dict(type="GN", num_groups=4)


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


def build_pair(cfg: dict, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The oracle head with random weights and norm statistics, and ours loaded strictly from it.

    Parameters that start at zero (ANN's out projections, DANet's ``gamma``) are drawn at random too, or
    the attention paths would add nothing and prove nothing.
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    torch.manual_seed(seed)
    oracle = randomize_(MODELS.build(copy.deepcopy(cfg)), seed=seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for p in oracle.parameters():
            if not p.abs().sum() > 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    ours = build("head", copy.deepcopy(cfg))
    state = oracle.state_dict()
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)
    return oracle, ours


def make_feats(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, *SIZE, generator=gen) for c in (LOW, HIGH)]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(CASES))
def test_eval_logits_match_oracle(name: str) -> None:
    oracle, ours = build_pair(CASES[name]())
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


def oracle_head_loss(head: torch.nn.Module, feats: list[torch.Tensor], labels: torch.Tensor) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for i in range(labels.shape[0]):
        sample = SegDataSample(metainfo=dict(img_shape=tuple(labels.shape[1:]), ori_shape=tuple(labels.shape[1:])))
        sample.gt_sem_seg = PixelData(data=labels[i:i + 1])
        samples.append(sample)
    return dict(head.loss(feats, samples, train_cfg={}))


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
    oracle, ours = build_pair(make_cfg(), seed=3)
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
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    cfg = ann(query_scales=(2,))
    oracle = MODELS.build(copy.deepcopy(cfg)).eval()
    with pytest.raises(RuntimeError), torch.no_grad():
        oracle(make_feats(0))
    with pytest.raises(ValueError, match="query_scales"):
        build("head", cfg)
