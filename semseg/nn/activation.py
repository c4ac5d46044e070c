"""Activation layers built from an mmcv-style ``act_cfg``."""

from __future__ import annotations

import torch
from torch import nn


class HSigmoid(nn.Module):
    """Hard sigmoid ``clamp((x + bias) / divisor, min_value, max_value)`` (mmcv's defaults: 3, 6, 0, 1)."""

    def __init__(self, bias: float = 3.0, divisor: float = 6.0, min_value: float = 0.0, max_value: float = 1.0):
        super().__init__()
        self.bias, self.divisor = bias, divisor
        self.min_value, self.max_value = min_value, max_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + self.bias) / self.divisor).clamp(self.min_value, self.max_value)


class HSwish(nn.Module):
    """Hard swish ``x * relu6(x + 3) / 6``."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.hardswish(x)


class Swish(nn.Module):
    """``x * sigmoid(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


# config type -> (layer class, whether it accepts `inplace`)
_ACTIVATIONS: dict[str, tuple[type[nn.Module], bool]] = {
    "ReLU": (nn.ReLU, True),
    "ReLU6": (nn.ReLU6, True),
    "LeakyReLU": (nn.LeakyReLU, True),
    "ELU": (nn.ELU, True),
    "PReLU": (nn.PReLU, False),
    "GELU": (nn.GELU, False),
    "Sigmoid": (nn.Sigmoid, False),
    "Tanh": (nn.Tanh, False),
    "SiLU": (nn.SiLU, True),
    "Swish": (Swish, False),
    "HSwish": (HSwish, True),
    "HSigmoid": (HSigmoid, False),
}


def build_activation(act_cfg: dict | None, inplace: bool | None = None) -> nn.Module | None:
    """Build an activation from ``act_cfg`` (``None`` gives ``None``).

    ``inplace`` fills in the config's ``inplace`` when the config does not set it and the layer takes it.
    """
    if act_cfg is None:
        return None
    cfg = dict(act_cfg)
    act_type = cfg.pop("type", None)
    if act_type not in _ACTIVATIONS:
        raise KeyError(f"unknown activation type {act_type!r} in act_cfg; expected one of {sorted(_ACTIVATIONS)}")
    layer_cls, takes_inplace = _ACTIVATIONS[act_type]
    if takes_inplace and inplace is not None:
        cfg.setdefault("inplace", inplace)
    elif not takes_inplace:
        cfg.pop("inplace", None)
    return layer_cls(**cfg)
