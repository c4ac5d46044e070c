"""oneDNN inference on CPUs: convolution weights prepacked once, and the backbone in oneDNN's blocked layout.

Eager PyTorch runs an fp32 CPU convolution through oneDNN, but on every call it reorders the weights into
oneDNN's blocked layout and the activations into it and back out. :func:`to_onednn` does the weight
reorder once (each ``nn.Conv2d`` becomes a :class:`OneDNNConv2d`) and, for backbones whose operators all
accept oneDNN tensors (:data:`BLOCKED_LAYOUT_BACKBONES`), keeps the activations in the blocked layout from
the backbone's input to its outputs. The arithmetic is oneDNN's in both cases, so the logits equal the
eager ones (tested within 1e-5; the ResNet backbones give identical features).

Inference only, CPU and float32 only; the state dict keeps its keys and values (the prepacked copies are
not in it), but weights loaded afterwards are not seen: convert after loading.
"""

from __future__ import annotations

import torch
from torch import nn

# Backbones whose forward runs on oneDNN tensors end to end (convolutions, BatchNorm, ReLU, residual
# additions, max / average pooling): their activations stay in the blocked layout.
BLOCKED_LAYOUT_BACKBONES = ("ResNet", "ResNetV1c", "ResNetV1d")


class OneDNNConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and keys) whose inference uses a weight prepacked for oneDNN.

    Input (N, C, H, W) dense or oneDNN tensor -> output of the same kind. With autograd recording (a
    weight that requires grad under ``torch.enable_grad``) it runs as a plain ``nn.Conv2d``.
    """

    def prepack(self) -> None:
        """Reorder the current weight into oneDNN's blocked layout (again after changing the weight)."""
        args = (self.padding, self.stride, self.dilation, self.groups)
        self.packed_weight = torch._C._nn.mkldnn_reorder_conv2d_weight(self.weight.detach().to_mkldnn(), *args)
        self.packed_bias = None if self.bias is None else self.bias.detach().clone()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> OneDNNConv2d:
        """The same convolution (sharing ``conv``'s parameters) with its weight prepacked."""
        packed = cls.__new__(cls)
        packed.__dict__.update(conv.__dict__)
        packed.prepack()
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad and not x.is_mkldnn:
            return super().forward(x)
        return torch.mkldnn_convolution(x, self.packed_weight, self.packed_bias, self.padding, self.stride,
                                        self.dilation, self.groups)


def _convertible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu")


def prepack_convolutions(module: nn.Module) -> int:
    """Replace every plain float32 CPU ``nn.Conv2d`` inside ``module`` by a :class:`OneDNNConv2d`, in
    place; returns how many were replaced."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _convertible(child):
                setattr(parent, name, OneDNNConv2d.from_conv(child))
                replaced += 1
    return replaced


def _to_blocked(module: nn.Module, args: tuple) -> tuple:
    return (args[0].to_mkldnn(), *args[1:])


def _to_dense(module: nn.Module, args: tuple, outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.to_dense()
    return type(outputs)(out.to_dense() for out in outputs)


def to_onednn(model: nn.Module) -> nn.Module:
    """Prepare an eval-mode segmentor (or any module) for oneDNN inference on the CPU, in place.

    Every convolution gets a prepacked weight; a backbone named in :data:`BLOCKED_LAYOUT_BACKBONES`
    (``model.backbone``) takes and keeps oneDNN tensors inside and hands dense features to the neck and
    heads. Returns ``model``. Raises when oneDNN is unavailable or the model is not on the CPU in float32.
    """
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("onednn: this PyTorch build has no oneDNN (MKL-DNN) support")
    weights = [p for p in model.parameters() if p.is_floating_point()]
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in weights):
        raise ValueError("onednn: the model must be on the CPU in float32 (oneDNN layouts are a CPU option)")
    prepack_convolutions(model)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and type(backbone).__name__ in BLOCKED_LAYOUT_BACKBONES:
        backbone.register_forward_pre_hook(_to_blocked)
        backbone.register_forward_hook(_to_dense)
    return model
