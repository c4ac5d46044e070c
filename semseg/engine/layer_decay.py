"""Layer-wise learning-rate decay: the parameter groups of MMSegmentation's ``LearningRateDecayOptimizerConstructor``
and ``LayerDecayOptimizerConstructor``.

A config says::

    optim_wrapper = dict(optimizer=dict(type='AdamW', lr=6e-5, weight_decay=0.01),
                         constructor='LearningRateDecayOptimizerConstructor',
                         paramwise_cfg=dict(num_layers=12, decay_rate=0.9, decay_type='layer_wise'))

(``LayerDecayOptimizerConstructor`` is the older spelling: ``layer_decay_rate`` instead of ``decay_rate``,
always layer-wise over a ViT.) Every backbone parameter gets a layer id, the embeddings 0 and deeper layers
higher ids, the decode heads the highest; with L = num_layers + 2 a parameter's lr is
``lr * decay_rate ** (L - 1 - id)``, so the heads train at the full lr and the embeddings at the smallest.
1-d parameters and biases get no weight decay. Parameters sharing an id and a decay form one group.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from semseg.models.backbones.vit import VisionTransformer

LAYER_DECAY_CONSTRUCTORS = ("LearningRateDecayOptimizerConstructor", "LayerDecayOptimizerConstructor")
DECAY_TYPES = ("layer_wise", "stage_wise", "layer_wise_vit")
_EMBEDDINGS = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")


def vit_layer_id(name: str, num_layers: int) -> int:
    """ViT-like backbones (``backbone.layers.i``): embeddings 0, layer i -> i + 1, the rest ``num_layers - 1``
    (``num_layers`` here is paramwise_cfg's plus 2)."""
    if name in _EMBEDDINGS or name.startswith("backbone.patch_embed"):
        return 0
    match = re.match(r"backbone\.layers\.(\d+)\.", name)
    return int(match[1]) + 1 if match else num_layers - 1


def convnext_layer_id(name: str, num_layers: int) -> int:
    """ConvNeXt, layer-wise: stage 2's blocks in threes, the other stages one id each; the rest
    ``num_layers + 1`` (``num_layers`` as paramwise_cfg gives it)."""
    if name in _EMBEDDINGS:
        return 0
    if match := re.match(r"backbone\.downsample_layers\.(\d+)", name):
        return (0, 2, 3, num_layers)[int(match[1])]
    if match := re.match(r"backbone\.stages\.(\d+)\.(\d+)", name):
        stage, block = int(match[1]), int(match[2])
        return (1, 2, 3 + block // 3, num_layers)[stage]
    return num_layers + 1


def convnext_stage_id(name: str, num_layers: int) -> int:
    """ConvNeXt, stage-wise: embeddings and downsampling 0, stage s -> s + 1, the rest ``num_layers - 1``
    (paramwise_cfg's plus 2)."""
    if name in _EMBEDDINGS or name.startswith("backbone.downsample_layers"):
        return 0
    if match := re.match(r"backbone\.stages\.(\d+)", name):
        return int(match[1]) + 1
    return num_layers - 1


def _layer_id_rule(backbone: nn.Module, decay_type: str) -> tuple[Any, bool]:
    """(the id function for this backbone and decay type, whether it takes paramwise_cfg's num_layers + 2)."""
    kind = type(backbone).__name__
    convnext = "ConvNeXt" in kind
    vit_like = "BEiT" in kind or "MAE" in kind or isinstance(backbone, VisionTransformer)
    if decay_type == "stage_wise" and convnext:
        return convnext_stage_id, True
    if "layer_wise" in decay_type and convnext:
        return convnext_layer_id, False
    if "layer_wise" in decay_type and vit_like:
        return vit_layer_id, True
    raise NotImplementedError(f"{decay_type!r} learning-rate decay is not defined for the backbone {kind} "
                              "(layer_wise: ViT-like backbones with layers.i, and ConvNeXt; stage_wise: ConvNeXt)")


def layer_decay_groups(model: nn.Module, base_lr: float, base_wd: float, paramwise_cfg: dict,
                       constructor: str = "LearningRateDecayOptimizerConstructor") -> list[dict]:
    """The parameter groups of MMSegmentation's layer-decay constructors for a segmentor ``model``.

    Args:
        model: a segmentor (it has ``backbone``); frozen parameters are left out.
        base_lr, base_wd: the optimizer's ``lr`` and ``weight_decay``.
        paramwise_cfg: ``num_layers`` (the backbone's depth), ``decay_rate`` (``layer_decay_rate`` for
            ``LayerDecayOptimizerConstructor``), ``decay_type`` ('layer_wise' default, 'stage_wise').
        constructor: one of :data:`LAYER_DECAY_CONSTRUCTORS`.

    Returns:
        Groups in order of first appearance, each ``{'weight_decay', 'params', 'param_names', 'lr_scale',
        'group_name', 'lr'}`` (group names ``layer_{id}_decay`` / ``layer_{id}_no_decay``), as MMSegmentation's.

    Raises:
        KeyError: a missing paramwise_cfg key; ValueError: an unknown constructor or decay type, or no
        weight_decay; NotImplementedError: a backbone the decay type has no layer ids for.
    """
    if constructor not in LAYER_DECAY_CONSTRUCTORS:
        raise ValueError(f"unknown layer-decay constructor {constructor!r} (known: {LAYER_DECAY_CONSTRUCTORS})")
    cfg = dict(paramwise_cfg)
    if constructor == "LayerDecayOptimizerConstructor":
        cfg["decay_type"] = "layer_wise_vit"
        cfg["decay_rate"] = cfg.pop("layer_decay_rate")
    for key in ("num_layers", "decay_rate"):
        if key not in cfg:
            raise KeyError(f"{constructor} needs paramwise_cfg.{key}")
    decay_type = cfg.get("decay_type", "layer_wise")
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"paramwise_cfg.decay_type must be one of {DECAY_TYPES}, got {decay_type!r}")
    if base_wd is None:
        raise ValueError(f"{constructor} needs the optimizer's weight_decay")
    num_layers = cfg["num_layers"] + 2
    layer_id, plus_two = _layer_id_rule(model.backbone, decay_type)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # As MMSegmentation: the bare names match only a model's own pos_embed / cls_token, not a backbone's.
        no_decay = param.ndim == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
        lid = layer_id(name, num_layers if plus_two else cfg["num_layers"])
        group_name = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
        if group_name not in groups:
            scale = cfg["decay_rate"] ** (num_layers - lid - 1)
            groups[group_name] = {"weight_decay": 0.0 if no_decay else base_wd, "params": [], "param_names": [],
                                  "lr_scale": scale, "group_name": group_name, "lr": scale * base_lr}
        groups[group_name]["params"].append(param)
        groups[group_name]["param_names"].append(name)
    return list(groups.values())
