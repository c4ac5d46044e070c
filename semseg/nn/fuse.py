"""Inference-time fusion: fold eval-mode BatchNorm into the convolution before it.

In eval mode a BatchNorm after a convolution is an affine map per output channel,
``y = (conv(x) - mean) * gamma / sqrt(var + eps) + beta``, so it can live in the convolution's weight and
bias: ``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``. One pass over
the feature map less per norm, same logits up to float rounding.

The fused model is for inference only: its norms become ``nn.Identity`` and its convolutions gain biases,
so its state dict no longer matches MMSegmentation's checkpoints (no ``*.bn.*`` keys, new ``*.conv.bias``
keys) and training it would no longer normalize.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from semseg.nn.conv_module import ConvModule


def fold_batchnorm_(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place (computed in float64, stored in conv's dtype)."""
    weight = conv.weight.detach().double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)  # (C_out,)
    with torch.no_grad():
        conv.weight.copy_(weight * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(conv.weight.dtype),
                             requires_grad=conv.weight.requires_grad)


def _conv_norm_pairs(module: nn.Module) -> Iterator[tuple[str, str]]:
    """Names ``(conv, norm)`` of the children of ``module`` where the norm's input is the conv's output.

    A ConvModule whose order puts the norm right after the conv; a ResNet block (``conv<i>`` and its
    ``norm_names[i - 1]``, e.g. ``bn1``); the ResNet V1b stem (``conv1`` and its ``stem_norm_name``);
    neighbours in an ``nn.Sequential`` (the deep stem, the downsampling shortcuts).
    """
    if isinstance(module, ConvModule):
        if module.norm_name is not None and module.order.index("norm") == module.order.index("conv") + 1:
            yield "conv", module.norm_name
    elif isinstance(module, nn.Sequential):
        names = list(module._modules)
        yield from zip(names, names[1:], strict=False)
    else:
        for i, norm in enumerate(getattr(module, "norm_names", ()), start=1):
            yield f"conv{i}", norm
        if getattr(module, "stem_norm_name", None) is not None and not getattr(module, "deep_stem", True):
            yield "conv1", module.stem_norm_name


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and isinstance(norm, _BatchNorm) and norm.track_running_stats
            and norm.running_mean is not None and conv.out_channels == norm.num_features)


def fuse(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    Covers ConvModules (conv then norm), the ResNet blocks (``conv1``/``bn1`` ...), the V1b stem
    (``conv1``/``bn1``) and conv-norm pairs inside ``nn.Sequential`` (deep stem, shortcuts). Each folded norm
    is replaced by ``nn.Identity``. Returns ``model``, which no longer loads MMSegmentation checkpoints
    (inference only). Raises when a norm to fold is in training mode (its statistics would be ignored).
    """
    for module in list(model.modules()):
        for conv_name, norm_name in list(_conv_norm_pairs(module)):
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if not _foldable(conv, norm):
                continue
            if norm.training:
                raise RuntimeError("fuse folds BatchNorm's running statistics: put the model in eval mode "
                                   "(model.eval()) first")
            fold_batchnorm_(conv, norm)
            setattr(module, norm_name, nn.Identity())
    return model
