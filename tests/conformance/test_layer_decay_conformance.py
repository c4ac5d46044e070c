"""Layer-wise lr decay vs MMSegmentation 1.2.2's LearningRateDecayOptimizerConstructor and
LayerDecayOptimizerConstructor (built through mmengine's OPTIM_WRAPPER_CONSTRUCTORS, scope mmseg): the same
parameter groups (names, lr, lr_scale, weight decay, order) on the same model.

MMSegmentation picks the layer ids by the backbone's class name: ConvNeXt, or BEiT / MAE (whose keys are a
ViT's: cls_token, pos_embed, patch_embed, layers.i). Its VisionTransformer gets none (NotImplementedError);
semseg gives it the BEiT/MAE ids, so the oracle runs here on the same ViT relabelled as an MAE backbone.
ConvNeXt is not in the zoo: a module tree with its names stands in for it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from oracle import require_oracle
from test_layer_decay import vit_segmentor
from torch import nn

from semseg.engine.layer_decay import layer_decay_groups

ADAMW = dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)


class ConvNeXt(nn.Module):
    """ConvNeXt's parameter names: downsample_layers.i, stages.i.j (stage 2 deep), an output norm."""

    def __init__(self) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 1), nn.LayerNorm(4)) for _ in range(4))
        self.stages = nn.ModuleList(
            nn.Sequential(*(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Linear(4, 4)) for _ in range(depth)))
            for depth in (1, 2, 7, 1))
        for stage in self.stages:
            for block in stage:
                block.register_parameter("gamma", nn.Parameter(torch.ones(4)))
        self.norm3 = nn.LayerNorm(4)


class ConvNeXtSegmentor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = ConvNeXt()
        self.decode_head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))


def _mae(model: nn.Module) -> nn.Module:
    """The model with its ViT backbone's class renamed so that MMSegmentation gives it the BEiT/MAE ids."""
    model.backbone.__class__ = type("MAEVisionTransformer", (type(model.backbone),), {})
    return model


def oracle_groups(model: nn.Module, constructor: str, paramwise_cfg: dict) -> list[dict]:
    require_oracle()
    import mmseg.engine  # noqa: F401  (registers the constructors)
    from mmengine.registry import init_default_scope
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

    init_default_scope("mmseg")
    built = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type=constructor, optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=copy.deepcopy(ADAMW)),
        paramwise_cfg=copy.deepcopy(paramwise_cfg)))
    return built(model).optimizer.param_groups


def describe(model: nn.Module, groups: list[dict]) -> list[tuple[str, dict]]:
    """Each group as (its parameters' names, its settings without the tensors)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [(",".join(names[id(p)] for p in g["params"]), {k: v for k, v in g.items() if k != "params"})
            for g in groups]


CASES = {
    "vit_layer_wise": (vit_segmentor, "LearningRateDecayOptimizerConstructor",
                       dict(num_layers=2, decay_rate=0.65, decay_type="layer_wise")),
    "vit_layer_decay": (vit_segmentor, "LayerDecayOptimizerConstructor", dict(num_layers=2, layer_decay_rate=0.9)),
    "convnext_layer_wise": (ConvNeXtSegmentor, "LearningRateDecayOptimizerConstructor",
                            dict(num_layers=6, decay_rate=0.9, decay_type="layer_wise")),
    "convnext_stage_wise": (ConvNeXtSegmentor, "LearningRateDecayOptimizerConstructor",
                            dict(num_layers=6, decay_rate=0.9, decay_type="stage_wise")),
    "convnext_layer_decay": (ConvNeXtSegmentor, "LayerDecayOptimizerConstructor",
                             dict(num_layers=6, layer_decay_rate=0.8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_groups_match_oracle(case: str) -> None:
    require_oracle()
    make_model, constructor, paramwise_cfg = CASES[case]
    torch.manual_seed(0)
    model = make_model()
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)
    ours = torch.optim.AdamW(layer_decay_groups(model, ADAMW["lr"], ADAMW["weight_decay"], paramwise_cfg,
                                                constructor),
                             **{k: v for k, v in ADAMW.items() if k != "type"}).param_groups
    if "vit" in case:
        _mae(model)
    theirs = oracle_groups(model, constructor, paramwise_cfg)
    assert len(ours) > 3
    assert describe(model, ours) == describe(model, theirs)


def test_oracle_has_no_ids_for_its_vit() -> None:
    """The extension stated above: MMSegmentation's constructor rejects a VisionTransformer backbone."""
    with pytest.raises(NotImplementedError):
        oracle_groups(vit_segmentor(), "LearningRateDecayOptimizerConstructor", dict(num_layers=2, decay_rate=0.9))
