"""Normalization layers built from an mmcv-style ``norm_cfg``.

mmcv names a norm child after its type (``bn``, ``gn``, ``ln``, ``in``), and checkpoints carry that name
(``decode_head.bottleneck.bn.running_mean``), so :func:`build_norm` returns the name with the layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist
from torch import nn

# config type -> (attribute name in checkpoints, layer family)
_NORMS = {
    "BN": ("bn", "batch"),
    "BN2d": ("bn", "batch"),
    "SyncBN": ("bn", "sync"),
    "GN": ("gn", "group"),
    "LN": ("ln", "layer"),
    "IN": ("in", "instance"),
    "IN2d": ("in", "instance"),
}


def norm_name(norm_cfg: dict) -> str:
    """The attribute name mmcv gives a norm of this config (``bn``, ``gn``, ``ln``, ``in``)."""
    norm_type = norm_cfg.get("type")
    if norm_type not in _NORMS:
        raise KeyError(f"unknown norm type {norm_type!r} in norm_cfg; expected one of {sorted(_NORMS)}")
    return _NORMS[norm_type][0]


def build_norm(norm_cfg: dict, num_features: int) -> tuple[str, nn.Module]:
    """Build a norm layer for ``num_features`` channels; returns ``(attribute_name, layer)``.

    ``SyncBN`` becomes :class:`torch.nn.SyncBatchNorm` only inside an initialized process group whose
    backend can run it (not Gloo: SyncBatchNorm needs GPUs); otherwise it is a plain BatchNorm2d with
    the same parameters and statistics.
    """
    cfg = dict(norm_cfg)
    norm_type = cfg.pop("type", None)
    name = norm_name({"type": norm_type})
    family = _NORMS[norm_type][1]
    requires_grad = cfg.pop("requires_grad", True)
    if family in ("batch", "sync"):
        sync = family == "sync" and dist.is_available() and dist.is_initialized() and dist.get_backend() != "gloo"
        layer_cls = nn.SyncBatchNorm if sync else nn.BatchNorm2d
        layer = layer_cls(num_features, **cfg)
    elif family == "group":
        if "num_groups" not in cfg:
            raise KeyError("norm_cfg of type 'GN' needs 'num_groups'")
        layer = nn.GroupNorm(num_channels=num_features, **cfg)
    elif family == "layer":
        layer = nn.LayerNorm(num_features, **cfg)
    else:
        layer = nn.InstanceNorm2d(num_features, **cfg)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return name, layer


def add_norms(module: nn.Module, norm_cfg: dict, channels: Sequence[int]) -> tuple[str, ...]:
    """Register one norm per entry of ``channels`` on ``module`` as ``bn1, bn2, ...``; returns the names.

    mmcv names a block's numbered norms by the norm type plus a position (a GN config gives ``gn1, gn2``);
    this is the one place those names are made.
    """
    prefix = norm_name(norm_cfg)
    names = tuple(f"{prefix}{i}" for i in range(1, len(channels) + 1))
    for name, num_features in zip(names, channels, strict=True):
        module.add_module(name, build_norm(norm_cfg, num_features)[1])
    return names
