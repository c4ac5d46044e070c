"""BiSeNetV2 backbone: shapes, stated channels and strides, structure, errors; its zoo model's float16
(AMP config) training steps on CPU with a gradient scaler, and the clear error where float16 cannot run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import semseg
from semseg.build import build
from semseg.engine import optim
from semseg.engine.optim import AmpOptimWrapper, build_optim_wrapper
from semseg.models.backbones.bisenetv2 import BiSeNetV2, GELayer

SMALL = dict(type="BiSeNetV2", detail_channels=(8, 8, 16), semantic_channels=(4, 8, 12, 16),
             semantic_expansion_ratio=2, bga_channels=16)
CONFIGS = Path(semseg.__file__).parent / "configs" / "bisenetv2"
AMP_CONFIG = CONFIGS / "bisenetv2_fcn_4xb4-amp-160k_cityscapes-1024x1024.py"
# The zoo model at reduced width (float16 convolutions on CPUs take torch's slow path, per group)
NARROW = {"model.backbone.detail_channels": (8, 8, 16), "model.backbone.semantic_channels": (4, 8, 12, 16),
          "model.backbone.bga_channels": 16, "model.backbone.semantic_expansion_ratio": 2,
          "model.decode_head.in_channels": 16, "model.decode_head.channels": 16,
          **{f"model.auxiliary_head.{i}.in_channels": c for i, c in enumerate((4, 8, 12, 16))},
          **{f"model.auxiliary_head.{i}.channels": 8 for i in range(4)}}


def _small(**overrides) -> BiSeNetV2:
    return build("backbone", {**SMALL, **overrides})


def _ceil_div(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The size after log2(stride) stride-2 layers, each rounding up."""
    h, w = size
    for _ in range(stride.bit_length() - 1):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


@pytest.mark.parametrize("size", [(64, 96), (75, 101), (13, 17), (1, 1)])
def test_features_match_stated_channels_and_strides(size: tuple[int, int]) -> None:
    model = _small().eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, *size))
    assert model.out_channels == [16, 4, 8, 12, 16]
    assert model.out_strides == [8, 4, 8, 16, 32]
    assert len(feats) == 5
    for feat, channels, stride in zip(feats, model.out_channels, model.out_strides, strict=True):
        assert feat.shape == (2, channels, *_ceil_div(size, stride))


def test_out_indices_pick_outputs() -> None:
    model = _small(out_indices=(4, 0)).eval()
    assert model.out_channels == [16, 16] and model.out_strides == [32, 8]
    feats = model(torch.randn(2, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(16, 2, 2), (16, 8, 8)]
    single = _small(out_indices=-4)
    assert single.out_channels == [4] and single.out_strides == [4]
    shallow = _small(detail_channels=(8, 16), semantic_channels=(4, 8, 16), out_indices=(0, 1, 2, 3))
    assert shallow.out_strides == [4, 4, 8, 16]
    assert [f.shape[2:] for f in shallow.eval()(torch.randn(2, 3, 33, 47))] == [(9, 12), (9, 12), (5, 6), (3, 3)]


def test_structure_and_key_names() -> None:
    model = _small()
    assert [len(stage) for stage in model.detail.detail_branch] == [2, 3, 3]
    semantic = model.semantic
    assert semantic.stage_names == ["stage1", "stage2", "stage3", "stage4", "stage4_CEBlock"]
    assert [len(getattr(semantic, f"stage{i}")) for i in (2, 3, 4)] == [2, 2, 4]
    down, same = semantic.stage2[0], semantic.stage2[1]
    assert isinstance(down, GELayer) and down.shortcut is not None and len(down.dwconv) == 2
    assert down.dwconv[0].activate is None and down.dwconv[0].conv.stride == (2, 2)
    assert down.dwconv[1].conv.groups == 4 * 2  # depthwise over the expanded channels
    assert same.shortcut is None and len(same.dwconv) == 1 and same.dwconv[0].conv.groups == 8
    assert model.bga.detail_dwconv[0].pointwise_conv.norm is None
    assert model.bga.detail_dwconv[0].pointwise_conv.conv.bias is not None
    assert isinstance(model.bga.detail_down[1], nn.AvgPool2d)
    keys = set(model.state_dict())
    for key in ("detail.detail_branch.2.2.bn.running_var", "semantic.stage1.fuse_last.conv.weight",
                "semantic.stage4.3.conv2.0.bn.weight", "semantic.stage3.0.shortcut.0.pointwise_conv.bn.bias",
                "semantic.stage4_CEBlock.gap.1.running_mean", "bga.semantic_dwconv.0.pointwise_conv.conv.bias",
                "bga.conv.bn.num_batches_tracked"):
        assert key in keys, key


def test_init_is_kaiming_convs_and_unit_norms() -> None:
    model = _small()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert biases and all(bool((b == 0).all()) for b in biases)


@pytest.mark.parametrize("bad", [dict(bga_channels=8), dict(semantic_channels=(4, 8, 16)),
                                 dict(detail_channels=(8, 8, 12)), dict(out_indices=(5,)),
                                 dict(out_indices=()), dict(detail_channels=())])
def test_bad_arguments_are_reported(bad: dict) -> None:
    with pytest.raises(ValueError):
        _small(**bad)


def test_layer_configs_are_ignored_as_in_mmsegmentation(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model = _small(norm_cfg=dict(type="GN", num_groups=2), act_cfg=dict(type="GELU"))
    assert "ignores norm_cfg" in caplog.text and "act_cfg" in caplog.text
    assert not any(isinstance(m, (nn.GroupNorm, nn.GELU)) for m in model.modules())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _small(norm_cfg=dict(type="BN"))
    assert "ignores" not in caplog.text


def test_zoo_model_has_four_auxiliary_losses() -> None:
    model = semseg.init_model(str(CONFIGS / "bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py"))
    assert [head.in_index for head in model.auxiliary_head] == [1, 2, 3, 4]
    with torch.no_grad():
        assert model.encode_decode(torch.randn(2, 3, 37, 53)).shape == (2, 19, 37, 53)
    model.train()
    losses = model.loss(torch.randn(2, 3, 32, 48), torch.randint(0, 19, (2, 32, 48)))
    assert {"decode.loss_ce", *(f"aux_{i}.loss_ce" for i in range(4))} <= set(losses)


def test_amp_config_trains_in_float16_on_cpu_with_a_scaler() -> None:
    """Two steps of the AMP zoo config's optimizer (float16 autocast, loss scale 512) on synthetic data, the
    model at reduced width."""
    if optim.float16_problem("cpu") is not None:
        pytest.skip(optim.float16_problem("cpu"))
    cfg = semseg.config.load_config(str(AMP_CONFIG), {**NARROW, "optim_wrapper.dtype": "float16",
                                                      "model.data_preprocessor.size": (32, 48)})
    assert cfg.optim_wrapper["type"] == "AmpOptimWrapper" and cfg.optim_wrapper["loss_scale"] == 512.0
    torch.manual_seed(0)
    model = build("segmentor", cfg.model.to_dict()).train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper.to_dict())
    assert isinstance(wrapper, AmpOptimWrapper) and wrapper.cast_dtype == torch.float16
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randn(2, 3, 32, 48, generator=generator)
        labels = torch.randint(0, 19, (2, 32, 48), generator=generator)
        with wrapper.optim_context(model):
            logits = model.backbone(x)[0]
            losses = model.loss(x, labels)
        assert logits.dtype == torch.float16
        loss = sum(value for key, value in losses.items() if "loss" in key)
        assert torch.isfinite(loss)
        wrapper.update_params(loss)
    state = wrapper.state_dict()["loss_scaler"]
    assert state["scale"] == 512.0 and state["_growth_tracker"] == 0  # fixed scale, as mmengine's float one
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("auxiliary_head.") for k in changed)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_float16_where_unsupported_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(2, 2)
    monkeypatch.delattr(torch.amp, "GradScaler")
    assert "GradScaler" in optim.float16_problem("cpu")
    with pytest.raises(RuntimeError, match="dtype='bfloat16'"):
        AmpOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), loss_scale=512.0, dtype="float16")
    monkeypatch.undo()
    if not torch.cuda.is_available():
        assert "'cuda'" in optim.float16_problem("cuda")
    # bfloat16 needs no scaler and runs wherever autocast does
    assert AmpOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), dtype="bfloat16").loss_scaler is None
