"""Layer-wise learning-rate decay (LearningRateDecayOptimizerConstructor / LayerDecayOptimizerConstructor):
layer ids, lr scales, weight decay and grouping, on a small ViT segmentor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.engine.layer_decay import convnext_layer_id, convnext_stage_id, layer_decay_groups, vit_layer_id

LR, WD = 1e-3, 0.05


def vit_segmentor(num_layers: int = 2) -> nn.Module:
    """ViT (C = 16, patch 4) + FCN heads: the names the layer ids key on."""
    return build("segmentor", dict(
        type="EncoderDecoder",
        backbone=dict(type="VisionTransformer", img_size=(16, 16), patch_size=4, embed_dims=16, num_layers=num_layers,
                      num_heads=2, out_indices=(num_layers - 1,), final_norm=True, patch_bias=True),
        decode_head=dict(type="FCNHead", in_channels=16, channels=8, num_convs=1, num_classes=3,
                         norm_cfg=dict(type="BN"), concat_input=False),
        auxiliary_head=dict(type="FCNHead", in_channels=16, channels=8, num_convs=1, num_classes=3,
                            norm_cfg=dict(type="BN"), concat_input=False)))


def test_vit_layer_ids() -> None:
    num_layers = 12 + 2
    assert [vit_layer_id(n, num_layers) for n in (
        "backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.projection.weight",
        "backbone.layers.0.ln1.weight", "backbone.layers.11.ffn.layers.1.bias", "backbone.ln1.weight",
        "decode_head.conv_seg.weight")] == [0, 0, 0, 1, 12, 13, 13]


def test_convnext_ids() -> None:
    assert [convnext_layer_id(n, 12) for n in (
        "backbone.downsample_layers.0.0.weight", "backbone.downsample_layers.1.1.weight",
        "backbone.downsample_layers.3.1.bias", "backbone.stages.0.2.gamma", "backbone.stages.2.7.pointwise_conv1.weight",
        "backbone.stages.3.0.gamma", "backbone.norm3.weight")] == [0, 2, 12, 1, 5, 12, 13]
    assert [convnext_stage_id(n, 14) for n in (
        "backbone.downsample_layers.2.1.weight", "backbone.stages.2.7.gamma", "decode_head.conv_seg.bias")] == [0, 3, 13]


@pytest.mark.parametrize("constructor", ["LearningRateDecayOptimizerConstructor", "LayerDecayOptimizerConstructor"])
def test_vit_groups(constructor: str) -> None:
    model = vit_segmentor()
    model.backbone.layers[0].ln1.weight.requires_grad_(False)
    rate = {"decay_rate": 0.5} if constructor.startswith("LearningRate") else {"layer_decay_rate": 0.5}
    groups = layer_decay_groups(model, LR, WD, dict(num_layers=2, **rate), constructor)
    by_name = {g["group_name"]: g for g in groups}
    # num_layers + 2 = 4 ids: embeddings 0, layers 1 and 2, the rest (final norm, heads) 3.
    assert list(by_name) == ["layer_0_decay", "layer_0_no_decay", "layer_1_no_decay", "layer_1_decay",
                             "layer_2_no_decay", "layer_2_decay", "layer_3_no_decay", "layer_3_decay"]
    for lid in range(4):
        for kind, wd in (("decay", WD), ("no_decay", 0.0)):
            group = by_name[f"layer_{lid}_{kind}"]
            assert group["lr_scale"] == 0.5 ** (3 - lid) and group["lr"] == LR * 0.5 ** (3 - lid)
            assert group["weight_decay"] == wd
    assert by_name["layer_0_decay"]["param_names"] == ["backbone.cls_token", "backbone.pos_embed",
                                                       "backbone.patch_embed.projection.weight"]
    assert "backbone.layers.0.ln1.weight" not in by_name["layer_1_no_decay"]["param_names"]  # frozen
    assert "backbone.ln1.weight" in by_name["layer_3_no_decay"]["param_names"]
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    for group in groups:
        assert [p for p in group["params"]] == [model.get_parameter(n) for n in group["param_names"]]
    torch.optim.AdamW(groups, lr=LR, weight_decay=WD)  # the groups build an optimizer


def test_errors() -> None:
    model = vit_segmentor()
    with pytest.raises(KeyError, match="decay_rate"):
        layer_decay_groups(model, LR, WD, dict(num_layers=2))
    with pytest.raises(KeyError):
        layer_decay_groups(model, LR, WD, dict(num_layers=2, decay_rate=0.9), "LayerDecayOptimizerConstructor")
    with pytest.raises(ValueError, match="decay_type"):
        layer_decay_groups(model, LR, WD, dict(num_layers=2, decay_rate=0.9, decay_type="block_wise"))
    with pytest.raises(NotImplementedError, match="stage_wise"):
        layer_decay_groups(model, LR, WD, dict(num_layers=2, decay_rate=0.9, decay_type="stage_wise"))
    with pytest.raises(ValueError, match="weight_decay"):
        layer_decay_groups(model, LR, None, dict(num_layers=2, decay_rate=0.9))
    with pytest.raises(ValueError, match="constructor"):
        layer_decay_groups(model, LR, WD, dict(num_layers=2, decay_rate=0.9), "DefaultOptimWrapperConstructor")
    resnet = build("segmentor", dict(
        type="EncoderDecoder", backbone=dict(type="ResNet", depth=18, base_channels=4, stem_channels=4),
        decode_head=dict(type="FCNHead", in_channels=32, channels=4, num_classes=3, norm_cfg=dict(type="BN"))))
    with pytest.raises(NotImplementedError, match="ResNet"):
        layer_decay_groups(resnet, LR, WD, dict(num_layers=2, decay_rate=0.9))


def test_optim_wrapper_config_builds_the_decayed_groups() -> None:
    from semseg.engine.optim import build_optim_wrapper

    model = vit_segmentor()
    wrapper = build_optim_wrapper(model, dict(
        type="OptimWrapper", constructor="LayerDecayOptimizerConstructor",
        optimizer=dict(type="AdamW", lr=LR, weight_decay=WD),
        paramwise_cfg=dict(num_layers=2, layer_decay_rate=0.5, decay_type="layer_wise")))
    lrs = sorted({group["lr"] for group in wrapper.optimizer.param_groups})
    assert lrs == [LR * 0.5 ** k for k in (3, 2, 1, 0)]
