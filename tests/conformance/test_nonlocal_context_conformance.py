"""Non-local, disentangled non-local and context blocks, NLHead, DNLHead and GCHead vs MMSegmentation 1.2.2
(mmcv's ``NonLocal2d`` / ``ContextBlock``): keys, outputs, head logits and head training losses."""

from __future__ import annotations

import pytest
import torch
from oracle import head_pair, mmseg_config_dir, oracle_head_loss, randomize_, replace_syncbn

from semseg.nn.context_block import ContextBlock
from semseg.nn.non_local import DisentangledNonLocal2d, NonLocal2d

MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
BN = dict(type="BN")
IN_CHANNELS = 12
SIZE = (13, 17)


def compare_blocks(oracle: torch.nn.Module, ours: torch.nn.Module, channels: int = 8) -> float:
    """Load the oracle block's random weights into ours; max abs difference of their outputs (eval)."""
    randomize_(oracle, seed=1, conv_std=0.3).eval()
    state = oracle.state_dict()
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    x = torch.randn(2, channels, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = oracle(x.clone())  # the oracle's DNL gaussian mode writes into its input
        got = ours(x)
    assert (expected - x).abs().max() > 0.1  # the block must not be the identity
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("sub_sample", "use_scale", "norm_cfg"), [(False, True, BN), (True, False, BN),
                                                                    (True, True, None), (False, False, None)])
def test_non_local_matches_oracle(mode: str, sub_sample: bool, use_scale: bool, norm_cfg: dict | None) -> None:
    from mmcv.cnn import NonLocal2d as OracleNonLocal2d

    kwargs = dict(reduction=2, use_scale=use_scale, mode=mode, norm_cfg=norm_cfg, sub_sample=sub_sample)
    assert compare_blocks(OracleNonLocal2d(8, **kwargs), NonLocal2d(8, **kwargs)) < 1e-5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("temperature", "use_scale"), [(0.05, True), (0.5, False)])
def test_disentangled_non_local_matches_oracle(mode: str, temperature: float, use_scale: bool) -> None:
    from mmseg.models.decode_heads.dnl_head import DisentangledNonLocal2d as OracleDNL

    kwargs = dict(reduction=2, use_scale=use_scale, mode=mode, norm_cfg=BN, temperature=temperature)
    assert compare_blocks(OracleDNL(8, **kwargs), DisentangledNonLocal2d(8, **kwargs)) < 1e-5


@pytest.mark.parametrize("pooling_type", ["att", "avg"])
@pytest.mark.parametrize("fusion_types", [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")])
def test_context_block_matches_oracle(pooling_type: str, fusion_types: tuple[str, ...]) -> None:
    from mmcv.cnn import ContextBlock as OracleContextBlock

    args = (8, 1 / 4, pooling_type, fusion_types)
    assert compare_blocks(OracleContextBlock(*args), ContextBlock(*args)) < 1e-5


# ---- heads -----------------------------------------------------------------------------------------------

BASE_CONFIGS = {"NLHead": "nonlocal_r50-d8.py", "DNLHead": "dnl_r50-d8.py", "GCHead": "gcnet_r50-d8.py"}
BLOCKS = {"NLHead": "nl_block", "DNLHead": "dnl_block", "GCHead": "gc_block"}


def base_cfg(type_name: str, **kwargs) -> dict:
    """The decode head of the oracle's ``_base_/models`` config for ``type_name``, with tiny channel counts."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(mmseg_config_dir() / "_base_" / "models" / BASE_CONFIGS[type_name]))
    head = replace_syncbn(cfg.model.decode_head.to_dict())
    assert head["type"] == type_name
    head.update(in_channels=IN_CHANNELS, in_index=0, channels=8, num_classes=5, **kwargs)
    return head


# name -> (head type, overrides of its base config); configs are read in the tests (the oracle may be absent)
CASES = {
    "nl": ("NLHead", {}),
    "nl_dot_product_ac": ("NLHead", dict(mode="dot_product", align_corners=True)),
    "nl_concatenation_no_concat": ("NLHead", dict(mode="concatenation", use_scale=False, concat_input=False)),
    "dnl": ("DNLHead", {}),
    "dnl_ac_gn": ("DNLHead", dict(align_corners=True, temperature=0.2, norm_cfg=dict(type="GN", num_groups=2))),
    "gc": ("GCHead", {}),
    "gc_avg_both_ac": ("GCHead", dict(pooling_type="avg", fusion_types=("channel_add", "channel_mul"),
                                      align_corners=True)),
    "gc_mul_no_concat": ("GCHead", dict(ratio=1 / 2, fusion_types=("channel_mul",), concat_input=False)),
}


def block_head_pair(cfg: dict, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``head_pair`` with the block's convs redrawn from N(0, 0.3): its output layer starts at zero (a
    non-local block's other convs at std 0.01), so that otherwise the block would barely show in the logits."""
    block = BLOCKS[cfg["type"]]
    oracle, ours = head_pair(cfg, seed=seed, redraw_convs=block, conv_std=0.3)
    assert any(k.startswith(block + ".") for k in oracle.state_dict())
    return oracle, ours


def make_feats(seed: int) -> list[torch.Tensor]:
    return [torch.randn(2, IN_CHANNELS, *SIZE, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", list(CASES))
def test_head_logits_match_oracle(name: str) -> None:
    cfg = base_cfg(CASES[name][0], **CASES[name][1])
    oracle, ours = block_head_pair(cfg)
    oracle.eval()
    ours.eval()
    feats = make_feats(3)
    with torch.no_grad():
        expected = oracle(feats)
        got = ours(feats)
        # the same head without its block gives other logits: the block is exercised
        setattr(ours, BLOCKS[cfg["type"]], torch.nn.Identity())
        without_block = ours(feats)
    assert got.shape == expected.shape == (2, 5, *SIZE)
    assert expected.abs().max() > 1e-2
    assert (without_block - expected).abs().max() > 1e-2
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.filterwarnings("ignore:.*align_corners")
@pytest.mark.parametrize("name", ["nl", "nl_dot_product_ac", "dnl", "dnl_ac_gn", "gc", "gc_avg_both_ac"])
def test_head_train_loss_matches_oracle(name: str) -> None:
    cfg = base_cfg(CASES[name][0], **CASES[name][1], dropout_ratio=0.0)
    oracle, ours = block_head_pair(cfg, seed=4)
    oracle.train()
    ours.train()
    labels = torch.randint(0, 5, (2, 49, 65), generator=torch.Generator().manual_seed(5))
    labels[:, :4] = 255
    feats = make_feats(6)
    expected = oracle_head_loss(oracle, feats, labels)
    got = ours.loss(feats, labels)
    assert set(got) == set(expected) == {"loss_ce", "acc_seg"}
    for key in expected:
        assert (got[key] - expected[key]).abs().max().item() < 1e-4, key
