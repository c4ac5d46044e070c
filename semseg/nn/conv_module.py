"""Conv -> norm -> activation block with mmcv ``ConvModule``'s parameter names."""

from __future__ import annotations

import torch
from torch import nn

from semseg.nn.activation import build_activation
from semseg.nn.norm import build_norm

_CONVS = {None: nn.Conv2d, "Conv": nn.Conv2d, "Conv2d": nn.Conv2d}


def build_conv(conv_cfg: dict | None, *args, **kwargs) -> nn.Conv2d:
    """Build a 2-D convolution; ``conv_cfg`` may be ``None`` or ``dict(type='Conv2d')``."""
    conv_type = None if conv_cfg is None else conv_cfg.get("type")
    if conv_type not in _CONVS:
        raise KeyError(f"unsupported conv_cfg type {conv_type!r}; expected 'Conv2d'")
    return _CONVS[conv_type](*args, **kwargs)


class ConvModule(nn.Module):
    """Convolution, optional norm, optional activation.

    Children are named as in mmcv so checkpoints load unchanged: ``conv``, the norm by its type
    (``bn`` / ``gn`` / ``ln`` / ``in``) and ``activate``. ``bias='auto'`` gives the conv a bias only
    when there is no norm. ``order`` may put the norm before the conv (pre-activation blocks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool | str = "auto",
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        inplace: bool = True,
        padding_mode: str = "zeros",
        order: tuple[str, str, str] = ("conv", "norm", "act"),
    ):
        super().__init__()
        if sorted(order) != ["act", "conv", "norm"]:
            raise ValueError(f"order must be a permutation of ('conv', 'norm', 'act'), got {order}")
        self.order = tuple(order)
        if bias == "auto":
            bias = norm_cfg is None
        self.conv = build_conv(
            conv_cfg, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
        )
        self.norm_name: str | None = None
        if norm_cfg is not None:
            norm_channels = out_channels if self.order.index("norm") > self.order.index("conv") else in_channels
            self.norm_name, norm = build_norm(norm_cfg, norm_channels)
            self.add_module(self.norm_name, norm)
        self.activate = build_activation(act_cfg, inplace=inplace)
        self._init_weights()

    @property
    def norm(self) -> nn.Module | None:
        return None if self.norm_name is None else getattr(self, self.norm_name)

    def _init_weights(self) -> None:
        nonlinearity = "leaky_relu" if isinstance(self.activate, nn.LeakyReLU) else "relu"
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity=nonlinearity)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.order:
            if step == "conv":
                x = self.conv(x)
            elif step == "norm" and self.norm_name is not None:
                x = self.norm(x)
            elif step == "act" and self.activate is not None:
                x = self.activate(x)
        return x
