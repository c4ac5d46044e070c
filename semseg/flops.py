"""Parameters and FLOPs of a model's forward pass, counted as MMSegmentation's ``get_flops`` counts them.

What MMSegmentation 1.2.2 counts (``tools/analysis_tools/get_flops.py``): it builds the model, sets
``auxiliary_head`` to None, switches to eval mode and calls mmengine's ``get_model_complexity_info(model,
inputs=...)``, which traces ``model(inputs)`` in ``mode='tensor'``: backbone, neck and decode head up to the
logits at the head's resolution, WITHOUT the final bilinear resize to the input size that ``encode_decode``
adds (mmengine would count that resize, 4 per output element, but get_flops never runs it). The parameters
are those of the model without its auxiliary heads.

How mmengine counts (``mmengine/analysis``): one multiply-add is ONE flop, and only these operators count;
every other one (ReLU, additions, softmax, max/avg pooling, concatenation, dropout, ...) counts zero:

================================  ==========================================================================
convolution (transposed too)      N * prod(weight.shape) * prod(output spatial size) (transposed: input's);
                                  bias not counted
linear                            prod(input.shape) * out_features
matmul / mm                       prod(a.shape) * b.shape[-1]   (a 1-D operand taken as a row / column)
bmm / addmm                       N * n * m * p   /   n * m * p
einsum                            multiply-adds of numpy's optimal path, read from its report to 4 significant
                                  digits (exact for the two batched-matmul patterns mmengine special-cases)
batch_norm                        eval: numel * (2 with affine, else 1); training: numel * (5 or 4)
group / layer / instance norm     numel * (5 with affine, else 4)
bilinear / nearest 2-D upsample   4 / 1 per output element (``F.interpolate`` of a 4-D input)
adaptive_avg_pool2d               1 per input element (also ``F.interpolate(mode='area')``)
grid_sample                       4 per output element
================================  ==========================================================================

One addition: ``F.scaled_dot_product_attention`` (unknown to mmengine, which would count it zero) counts as
the two matmuls it replaces, ``q @ k^T`` and ``softmax @ v``, which is what mmengine counts for
MMSegmentation's own attention blocks; so ANN, whose attention runs through it here, counts what get_flops
gives on MMSegmentation's model (DANet too, less the two branch classifiers MMSegmentation's DAHead.forward
runs for its training losses, which our forward does not).

mmengine traces with ``torch.jit``, which records the outermost ATen operator each Python call makes; the
counter here is a ``TorchFunctionMode`` that sees those same calls from Python. A call is counted as a whole:
the operators a Python-level torch function makes inside are not seen (``F.interpolate`` is resolved by its
mode; ``F.multi_head_attention_forward``, which no model here uses, would count zero).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["Complexity", "model_complexity"]

_SKIPPED = ("auxiliary_head",)  # a segmentor's children that get_flops removes


@dataclass
class Complexity:
    """Counts of one forward pass.

    Attributes:
        flops: multiply-adds (one multiply-add = one FLOP, mmengine's and MMSegmentation's convention).
        params: parameters of the counted model (a segmentor's auxiliary heads excluded).
        by_module: flops per top-level child (``backbone``, ``neck``, ``decode_head``, ...). Operators the
            model runs outside its children are in ``flops`` only.
    """

    flops: int
    params: int
    by_module: dict[str, int] = field(default_factory=dict)

    def gflops(self) -> float:
        """``flops`` in units of 1e9 (multiply-adds)."""
        return self.flops / 1e9

    def mac_convention_note(self) -> str:
        """One line saying which convention ``flops`` follows."""
        return ("FLOPs count one multiply-add as one FLOP (MACs), as MMSegmentation's get_flops / mmengine do; "
                "double them for the 'multiply and add = 2 FLOPs' convention")


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    """The argument at position ``index`` or keyword ``name`` of a call."""
    if index < len(args):
        return args[index]
    return kwargs.get(name, default)


def _conv(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    return x.shape[0] * w.numel() * prod(out.shape[2:])


def _conv_transposed(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    return x.shape[0] * w.numel() * prod(x.shape[2:])


def _linear(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    return x.numel() * w.shape[0]


def _matmul(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    # mmengine: prod(a.shape) * b.shape[-1], a 1-D `a` read as (1, k), a 1-D `b` as (k, 1); a broadcast
    # batch dimension of `b` is not counted.
    a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    return a.numel() * (b.shape[-1] if b.dim() > 1 else 1)


def _bmm(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "mat2")
    return a.numel() * b.shape[-1]


def _addmm(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    a, b = _arg(args, kwargs, 1, "mat1"), _arg(args, kwargs, 2, "mat2")
    return a.numel() * b.shape[-1]


def _einsum(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    """mmengine reads the FLOP count of numpy's optimal einsum path from its printed report (4 significant
    digits) and halves it, except for the two batched-matmul patterns it counts exactly."""
    if not isinstance(args[0], str):
        raise NotImplementedError("torch.einsum in sublist form is not counted; write the equation as a string")
    equation = args[0].replace(" ", "")
    operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
    shapes = [tuple(t.shape) for t in operands]
    letters = {}
    for c in equation:
        if c.isalpha():
            letters.setdefault(c, chr(ord("a") + len(letters)))
    canonical = "".join(letters.get(c, c) for c in equation)
    if canonical == "abc,abd->acd":
        return prod(shapes[0]) * shapes[1][-1]
    if canonical == "abc,adc->adb":
        return prod(shapes[0]) * shapes[1][1]
    arrays = [np.broadcast_to(np.zeros((), np.float32), s) for s in shapes]
    report = np.einsum_path(canonical, *arrays, optimize="optimal")[1]
    line = next(s for s in report.splitlines() if "optimized flop" in s.lower())
    return int(float(line.split(":")[-1]) // 2)


def _attention(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    """F.scaled_dot_product_attention, which mmengine does not know, as the two matmuls it replaces:
    ``q @ k^T`` (..., L, E) x (..., E, S) and ``softmax @ v`` (..., L, S) x (..., S, Ev)."""
    q, k = _arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key")
    return q.numel() * k.shape[-2] + out.numel() * k.shape[-2]


def _norm(affine_index: int, affine_name: str) -> Callable[..., int]:
    def count(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
        affine = _arg(args, kwargs, affine_index, affine_name) is not None
        return _arg(args, kwargs, 0, "input").numel() * (5 if affine else 4)

    return count


def _batch_norm(weight_index: int, training_index: int) -> Callable[..., int]:
    """aten::batch_norm: eval counts numel * (2 with affine, else 1); training counts as the other norms."""

    def count(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
        affine = _arg(args, kwargs, weight_index, "weight") is not None
        numel = _arg(args, kwargs, 0, "input").numel()
        if _arg(args, kwargs, training_index, "training", False):
            return numel * (5 if affine else 4)
        return numel * (2 if affine else 1)

    return count


def _interpolate(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    """F.interpolate of a 4-D input makes upsample_nearest2d / upsample_bilinear2d (no antialiasing) or,
    for 'area', adaptive_avg_pool2d; other modes and ranks count zero."""
    x = _arg(args, kwargs, 0, "input")
    mode = _arg(args, kwargs, 3, "mode", "nearest")
    if x.dim() != 4 or _arg(args, kwargs, 6, "antialias", False):
        return 0
    return {"nearest": 1 * out.numel(), "bilinear": 4 * out.numel(), "area": x.numel()}.get(mode, 0)


def _input_elements(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    return _arg(args, kwargs, 0, "input").numel()


def _output_elements(scale: int) -> Callable[..., int]:
    def count(args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> int:
        return scale * out.numel()

    return count


# The functions the mode sees (Python API objects, torch and torch.nn.functional) -> their flop count.
COUNTERS: dict[Callable[..., Any], Callable[..., int]] = {
    **dict.fromkeys((torch.conv1d, torch.conv2d, torch.conv3d), _conv),
    **dict.fromkeys((torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d), _conv_transposed),
    F.linear: _linear,
    **dict.fromkeys((torch.matmul, torch.Tensor.matmul, torch.mm, torch.Tensor.mm), _matmul),
    **dict.fromkeys((torch.bmm, torch.Tensor.bmm), _bmm),
    **dict.fromkeys((torch.addmm, torch.Tensor.addmm), _addmm),
    torch.einsum: _einsum,
    F.scaled_dot_product_attention: _attention,
    F.batch_norm: _batch_norm(weight_index=3, training_index=5),
    torch.batch_norm: _batch_norm(weight_index=1, training_index=5),
    F.group_norm: _norm(2, "weight"),
    torch.group_norm: _norm(2, "weight"),
    F.layer_norm: _norm(2, "weight"),
    torch.layer_norm: _norm(2, "weight"),
    F.instance_norm: _norm(3, "weight"),
    torch.instance_norm: _norm(1, "weight"),
    F.interpolate: _interpolate,
    torch._C._nn.upsample_nearest2d: _output_elements(1),
    torch._C._nn.upsample_bilinear2d: _output_elements(4),
    F.adaptive_avg_pool2d: _input_elements,
    torch._C._nn.adaptive_avg_pool2d: _input_elements,
    F.grid_sample: _output_elements(4),
    torch.grid_sampler: _output_elements(4),
}


class _FlopCounter(TorchFunctionMode):
    """Adds up the flops of the counted torch calls, in total and per top-level child being run."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_module: dict[str, int] = {}
        self.scope: list[str] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = COUNTERS.get(func)
        if counter is not None:
            flops = int(counter(args, kwargs, out))
            self.total += flops
            if self.scope:
                self.by_module[self.scope[0]] += flops
        return out

    def enter(self, name: str, module: nn.Module, args: Any) -> None:
        """Forward pre-hook of the top-level child ``name``."""
        self.scope.append(name)

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook of a top-level child (returns None: the output is left as it is)."""
        self.scope.pop()


def _is_segmentor(model: nn.Module) -> bool:
    return callable(getattr(model, "extract_feat", None)) and callable(getattr(model, "decode", None))


def model_complexity(model: nn.Module, inputs: torch.Tensor) -> Complexity:
    """Parameters and FLOPs (multiply-add = 1) of one forward pass of ``model`` on ``inputs`` (N, 3, H, W).

    For a segmentor (a model with ``extract_feat`` and ``decode``), the pass counted is MMSegmentation's
    ``get_flops`` one: ``decode(extract_feat(inputs))`` in eval mode, auxiliary heads left out of both counts,
    no final resize. Any other module is counted as ``model(inputs)`` in eval mode. Every module's training
    flag is restored afterwards; weights and BatchNorm statistics are untouched.

    Only shapes matter: a model and inputs on the ``meta`` device (``copy.deepcopy(model).to('meta')``)
    count the same without computing anything, which makes large input sizes cheap.
    """
    segmentor = _is_segmentor(model)
    skipped = _SKIPPED if segmentor else ()
    counter = _FlopCounter()
    children = [(name, child) for name, child in model.named_children() if name not in skipped]
    counter.by_module = dict.fromkeys((name for name, _ in children), 0)
    handles = []
    for name, child in children:
        # a ModuleList (a cascade's decode heads) is never called itself: count its members under its name
        for member in child if isinstance(child, nn.ModuleList) else [child]:
            handles.append(member.register_forward_pre_hook(functools.partial(counter.enter, name)))
            handles.append(member.register_forward_hook(counter.leave))
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), counter:
            if segmentor:
                model.decode(model.extract_feat(inputs))
            else:
                model(inputs)
    finally:
        for module, mode in modes.items():
            module.training = mode
        for handle in handles:
            handle.remove()
    params = sum(p.numel() for name, p in model.named_parameters() if name.split(".", 1)[0] not in skipped)
    return Complexity(flops=counter.total, params=params, by_module=counter.by_module)
