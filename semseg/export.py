"""Export a segmentor to ONNX, TorchScript or a ``torch.export`` program (``.pt2``), and run an exported ONNX
model the way :meth:`~semseg.models.segmentor.EncoderDecoder.inference` runs the PyTorch one.

What the exported graph computes (:class:`ExportedSegmentor`):
    default: ``input`` float32 (N, 3, H, W), normalized as the config's data preprocessor does
        (MMDeploy's convention) -> ``logits`` float32 (N, C, H, W) at the input size.
    ``with_preprocess=True``: ``image`` uint8 (N, H, W, 3) in BGR order (as ``cv2.imread`` reads it;
        ``input_order='rgb'`` for PIL / NumPy RGB images) -> ``labels`` int64 (N, H, W) and ``logits``.
        The channel swap and the mean/std normalization run inside the graph; the config's test-pipeline
        resize does not (feed the size you want the labels at).

Inference modes: a whole-mode config exports the whole-image network. A slide-mode config exports the
network on one crop (the *crop model*) and the crop window loop runs outside the graph:
:class:`OnnxSegmentor` reads the crop size and stride from the file's metadata and averages the crops'
logits exactly as :func:`~semseg.models.inference.slide_inference` does. ``slide_in_graph=True`` instead
unrolls the windows of one fixed image size into the graph (static shape).

Dynamic axes: the ONNX exporter is torch's TorchScript-based one by default (``dynamo=False``: a few tenths
of a second on a small model, against 5-8 s for the dynamo exporter, whose graphs for adaptive pooling
also came out pinned to the traced size). Tracing can silently freeze a size into the graph, so
:func:`export_onnx` proves every axis it calls dynamic: it runs the graph with onnxruntime at a second
size and batch and compares with PyTorch; an axis that fails is exported static instead, and the result
says which axes are dynamic. While tracing, adaptive average pooling to sizes other than 1x1 (PSPNet,
UPerNet, APCNet, ANN, DMNet, Fast-SCNN) is replaced by an equivalent that ONNX can express for any input
size (:func:`adaptive_avg_pool2d_by_matrices`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from semseg.models.inference import slide_windows

__all__ = [
    "ExportedSegmentor",
    "ExportResult",
    "OnnxSegmentor",
    "adaptive_avg_pool2d_by_matrices",
    "check_onnx",
    "export_onnx",
    "export_program",
    "export_torchscript",
]

# ``progress(step)`` hears each long step of an export before it starts (``semseg export`` shows them)
ProgressCallback = Callable[[str], None]

MIN_OPSET = 17
DEFAULT_OPSET = 17
METADATA_KEY = "semseg"


def _missing(package: str) -> ImportError:
    return ImportError(f"exporting needs {package}: pip install 'semseg[export]' (onnx, onnxruntime)")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise _missing("onnxruntime") from error
    return onnxruntime


def _onnx():
    try:
        import onnx
    except ImportError as error:
        raise _missing("onnx") from error
    return onnx


def adaptive_avg_pool2d_by_matrices(x: torch.Tensor, output_size: int | Sequence[int | None]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` as two averaging matrices: x (N, C, H, W) -> (N, C, s_h, s_w).

    Bin ``i`` of ``s`` over a side of length ``L`` covers ``[floor(i L / s), ceil((i + 1) L / s))``, as in
    PyTorch. The bins are built from the input's shape with tensor arithmetic, so a traced graph stays
    valid for every input size (ONNX has no adaptive pooling besides the global one).
    """
    sizes = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    height, width = x.shape[-2:]
    s_h, s_w = (length if s is None else s for s, length in zip(sizes, (height, width), strict=True))
    rows = _bin_matrix(height, s_h, x)  # (s_h, H)
    cols = _bin_matrix(width, s_w, x)  # (s_w, W)
    pooled = torch.einsum("ih,nchw,jw->ncij", rows, x, cols)
    # a reshape to constant sizes lets the exporter know the pooled shape (DMNet's generated filters)
    return pooled.reshape(-1, int(x.shape[1]), int(s_h), int(s_w))


def _bin_matrix(length, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, length): row ``i`` holds ``1 / len(bin i)`` on the bin's positions, 0 elsewhere."""
    index = torch.arange(bins, device=like.device)
    start = (index * length).div(bins, rounding_mode="floor")
    end = ((index + 1) * length + bins - 1).div(bins, rounding_mode="floor")
    positions = torch.arange(length, device=like.device)
    inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


class _ExportableOps(TorchFunctionMode):
    """While tracing, two ops take a form that ONNX Runtime runs at any input size: adaptive average
    pooling to anything but 1x1 (1x1 exports as GlobalAveragePool already) goes through
    :func:`adaptive_avg_pool2d_by_matrices`, and ``torch.eye`` (CCNet's boolean mask: onnxruntime has no
    boolean EyeLike) becomes a comparison of two ranges."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d):
            x, size = args[0], args[1] if len(args) > 1 else kwargs["output_size"]
            if size not in (1, (1, 1), [1, 1]):
                return adaptive_avg_pool2d_by_matrices(x, size)
        if func is torch.eye:
            rows = args[0]
            cols = args[1] if len(args) > 1 else kwargs.get("m", rows)
            device = kwargs.get("device")
            eye = torch.arange(rows, device=device)[:, None] == torch.arange(cols, device=device)[None, :]
            return eye.to(kwargs.get("dtype") or torch.get_default_dtype())
        return func(*args, **kwargs)


class ExportedSegmentor(nn.Module):
    """The computation an exported file holds (see the module docstring for inputs and outputs).

    Args:
        model: a segmentor in eval mode (``EncoderDecoder`` or ``CascadeEncoderDecoder``).
        with_preprocess: take uint8 (N, H, W, 3) images and return labels and logits.
        input_order: ``'bgr'`` or ``'rgb'``, the channel order of a ``with_preprocess`` input.
        slide_in_graph: run the config's slide inference inside the graph (one fixed image size).
    """

    def __init__(self, model: nn.Module, with_preprocess: bool = False, input_order: str = "bgr",
                 slide_in_graph: bool = False):
        super().__init__()
        if input_order not in ("bgr", "rgb"):
            raise ValueError(f"input_order must be 'bgr' or 'rgb', got {input_order!r}")
        self.model = model
        self.with_preprocess = with_preprocess
        self.slide_in_graph = slide_in_graph
        preprocessor = model.data_preprocessor
        # the config's pipeline loads BGR; its preprocessor may swap to RGB
        self.flip_channels = bool(preprocessor.swap_channels) != (input_order == "rgb")
        self.normalize = bool(preprocessor.normalize)
        if self.normalize:
            self.register_buffer("mean", preprocessor.mean.detach().clone().view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", preprocessor.std.detach().clone().view(1, 3, 1, 1), persistent=False)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalized float32 (N, 3, H, W), as the data preprocessor does."""
        x = image.permute(0, 3, 1, 2).float()
        if self.flip_channels:
            x = x.flip(1)
        return (x - self.mean) / self.std if self.normalize else x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized x (N, 3, H, W) -> float32 logits (N, C, H, W)."""
        if self.slide_in_graph:
            return self.model.inference(x)
        logits = self.model.network(x).float()
        # resized here (not through encode_decode) so that the traced size follows the input's
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.model.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.with_preprocess:
            return self.logits(x)
        logits = self.logits(self.preprocess(x))
        return self.model.predict_labels(logits), logits


@dataclass
class ExportResult:
    """What an export wrote: the file, its format, the traced input shape, the axes (``'batch'``,
    ``'height'``, ``'width'``) that accept any size, the largest PyTorch-vs-runtime difference measured
    per input shape, and the metadata stored in the file."""

    path: Path
    format: str
    shape: tuple[int, ...]
    dynamic: tuple[str, ...]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def _mode_cfg(model: nn.Module) -> dict:
    cfg = dict(model.test_cfg)
    mode = cfg.get("mode", "whole")
    if mode == "slide":
        return {"mode": "slide", "crop_size": [int(v) for v in cfg["crop_size"]],
                "stride": [int(v) for v in cfg["stride"]]}
    return {"mode": mode}


def default_shape(model: nn.Module) -> tuple[int, int]:
    """The traced image size: the slide crop for a slide-mode config, else the config's ``crop_size``
    (512x512 when it has none)."""
    mode = _mode_cfg(model)
    if mode["mode"] == "slide":
        return tuple(mode["crop_size"])
    crop = (getattr(model, "cfg", None) or {}).get("crop_size") if hasattr(model, "cfg") else None
    return tuple(int(v) for v in crop) if crop else (512, 512)


def _metadata(model: nn.Module, wrapper: ExportedSegmentor, shape: Sequence[int], dynamic: Sequence[str]) -> dict:
    meta = dict(_mode_cfg(model))
    if wrapper.slide_in_graph:
        meta = {"mode": "whole", "slide_in_graph": True, **{k: v for k, v in meta.items() if k != "mode"}}
    dataset_meta = getattr(model, "dataset_meta", None) or {}
    meta.update({
        "input": "image" if wrapper.with_preprocess else "input",
        "with_preprocess": wrapper.with_preprocess,
        "input_order": "rgb" if wrapper.flip_channels != bool(model.data_preprocessor.swap_channels) else "bgr",
        "num_classes": int(model.num_classes),
        "out_channels": int(model.out_channels),
        "align_corners": bool(model.align_corners),
        "traced_shape": [int(v) for v in shape],
        "dynamic_axes": list(dynamic),
    })
    preprocessor = model.data_preprocessor
    if preprocessor.normalize:
        meta["mean"] = [float(v) for v in preprocessor.mean.flatten()]
        meta["std"] = [float(v) for v in preprocessor.std.flatten()]
    meta["bgr_to_rgb"] = bool(preprocessor.swap_channels)
    if model.out_channels == 1:
        meta["threshold"] = float(getattr(model.output_head, "threshold", None) or 0.5)
    for key in ("classes", "palette"):
        if key in dataset_meta:
            meta[key] = [list(v) if isinstance(v, (list, tuple)) else v for v in dataset_meta[key]]
    return meta


def _example(wrapper: ExportedSegmentor, batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A random input of the wrapper's kind: normalized floats, or uint8 HWC images."""
    generator = torch.Generator().manual_seed(seed)
    device = next(wrapper.parameters()).device
    if wrapper.with_preprocess:
        return torch.randint(0, 256, (batch, height, width, 3), generator=generator, dtype=torch.uint8).to(device)
    return torch.randn(batch, 3, height, width, generator=generator).to(device)


def _probe_shape(shape: Sequence[int], axes: Sequence[str], aligned: bool = True) -> tuple[int, int, int]:
    """A second (N, H, W) that differs from the traced one on each of ``axes``: H and W grow by 32 and 64
    (``aligned``: the same remainder modulo 32, which strided backbones and patch embeddings need), or
    by 11 and 21."""
    batch, height, width = shape
    grow_h, grow_w = (32, 64) if aligned else (11, 21)
    return (batch + 1 if "batch" in axes else batch, height + grow_h if "height" in axes else height,
            width + grow_w if "width" in axes else width)


def _torch_outputs(wrapper: ExportedSegmentor, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        out = wrapper(x)
    outs = out if isinstance(out, tuple) else (out,)
    return [o.detach().cpu().numpy() for o in outs]


def _max_abs_diff(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest difference over the outputs (logits; labels count as differences of class indices)."""
    if len(expected) != len(got) or any(e.shape != g.shape for e, g in zip(expected, got, strict=False)):
        return float("inf")
    return max(float(np.abs(e.astype(np.float64) - g.astype(np.float64)).max()) for e, g in zip(expected, got,
                                                                                                strict=True))


def _tolerance(expected: list[np.ndarray]) -> float:
    """Agreement needed to call an export faithful: 1e-3 of the logits' scale (float32 kernels differ)."""
    logits = expected[-1]
    return 1e-3 * max(1.0, float(np.abs(logits).max()))


def _onnx_agrees(path: Path, wrapper: ExportedSegmentor, shape: tuple[int, int, int]) -> float | None:
    """Max abs difference between onnxruntime and PyTorch at (N, H, W), or None when they disagree."""
    x = _example(wrapper, *shape, seed=1)
    try:
        expected = _torch_outputs(wrapper, x)
    except (ValueError, RuntimeError):  # the PyTorch model itself refuses this size
        return None
    try:
        got = _run_session(_session(path), x.cpu().numpy())
    except Exception:  # noqa: BLE001 - a graph pinned to the traced size fails at run time in many ways
        return None
    diff = _max_abs_diff(expected[-1:], got[-1:])  # logits; labels may flip where two logits tie
    return diff if diff <= _tolerance(expected) else None


def _session(path: str | Path):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # probing a size a graph may not take; failures are handled
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_session(session, x: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: x})


def _onnx_names(wrapper: ExportedSegmentor) -> tuple[list[str], list[str]]:
    if wrapper.with_preprocess:
        return ["image"], ["labels", "logits"]
    return ["input"], ["logits"]


def _dynamic_axes_spec(wrapper: ExportedSegmentor, axes: Sequence[str]) -> dict:
    inputs, outputs = _onnx_names(wrapper)
    positions = {"batch": 0, "height": 1, "width": 2} if wrapper.with_preprocess else {"batch": 0, "height": 2,
                                                                                     "width": 3}
    spec = {inputs[0]: {positions[a]: a for a in axes}}
    out_positions = {"batch": 0, "height": 2, "width": 3}
    for name in outputs:
        label_positions = {"batch": 0, "height": 1, "width": 2}
        spec[name] = {(label_positions if name == "labels" else out_positions)[a]: a for a in axes}
    return spec


def _trace_onnx(wrapper: ExportedSegmentor, x: torch.Tensor, path: Path, axes: Sequence[str], opset: int,
                dynamo: bool) -> None:
    import warnings

    inputs, outputs = _onnx_names(wrapper)
    with warnings.catch_warnings(), _ExportableOps(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's warnings are about sizes, which the probe checks
        if dynamo:
            dims = {"batch": 0, "height": 1, "width": 2} if wrapper.with_preprocess else {"batch": 0, "height": 2,
                                                                                        "width": 3}
            dynamic = {dims[a]: torch.export.Dim.AUTO for a in axes}
            torch.onnx.export(wrapper, (x,), str(path), dynamo=True, input_names=inputs, output_names=outputs,
                              dynamic_shapes=({**dynamic},), opset_version=opset, verbose=False,
                              external_data=False)
        else:
            torch.onnx.export(wrapper, (x,), str(path), dynamo=False, input_names=inputs, output_names=outputs,
                              dynamic_axes=_dynamic_axes_spec(wrapper, axes), opset_version=opset,
                              do_constant_folding=True)


def _attach_metadata(path: Path, metadata: dict) -> None:
    onnx = _onnx()
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(path))


def _wrap(model: nn.Module, with_preprocess: bool, input_order: str, slide_in_graph: bool) -> ExportedSegmentor:
    if model.training:
        raise ValueError("export needs a model in eval mode (call model.eval())")
    if slide_in_graph and _mode_cfg(model)["mode"] != "slide":
        raise ValueError("slide_in_graph needs a config whose test_cfg mode is 'slide'")
    return ExportedSegmentor(model, with_preprocess, input_order, slide_in_graph).eval()


def _attempts(shape: tuple[int, int, int], dynamic: bool, slide_in_graph: bool):
    """(dynamic axes, traced shape) to try in turn. Tracing at a second size as well catches code that
    skips a step at one size only (a ViT's position embedding is not resized at its pretraining size)."""
    if not dynamic:
        return [((), shape)]
    if slide_in_graph:
        return [(("batch",), shape), ((), shape)]
    attempts = []
    for axes in [("batch", "height", "width"), ("height", "width")]:
        attempts += [(axes, shape), (axes, _probe_shape(shape, axes))]
    return attempts + [(("batch",), shape), ((), shape)]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: torch's TorchScript exporter dumps its whole graph there when it refuses
    a dynamic axis, which :func:`export_onnx` then retries without."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _shape_args(model: nn.Module, shape: Sequence[int] | None, batch: int) -> tuple[int, int, int]:
    height, width = default_shape(model) if shape is None else (int(shape[0]), int(shape[1]))
    return batch, height, width


def export_onnx(
    model: nn.Module,
    path: str | Path,
    shape: Sequence[int] | None = None,
    *,
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    with_preprocess: bool = False,
    input_order: str = "bgr",
    slide_in_graph: bool = False,
    dynamo: bool = False,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export ``model`` (eval mode) to an ONNX file at ``path``; returns what was written.

    Args:
        shape: (H, W) of the traced input; default :func:`default_shape`.
        batch: N of the traced input.
        opset: ONNX opset, at least 17.
        dynamic: try batch, height and width as dynamic axes; each is kept only where onnxruntime agrees
            with PyTorch at another size (``result.dynamic`` names the ones kept). False: all static.
        with_preprocess, input_order: see :class:`ExportedSegmentor`.
        slide_in_graph: tile inside the graph (static shape; slide-mode configs only).
        dynamo: use torch's dynamo-based exporter (slower) instead of the TorchScript-based one.
        progress: called with a short description of each step (tracing, checking, comparing) before it runs.

    The file's metadata (key ``'semseg'``, JSON) holds the mode, crop size and stride, class names and
    palette, the preprocessing and the dynamic axes, for :class:`OnnxSegmentor`.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET}, got {opset}")
    wrapper = _wrap(model, with_preprocess, input_order, slide_in_graph)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    requested = _shape_args(model, shape, batch)
    traced, kept = requested, ()
    for axes, trace_shape in _attempts(requested, dynamic, slide_in_graph):
        _report(progress, f"tracing at {_shape_name(trace_shape)}, dynamic axes: {', '.join(axes) or 'none'}")
        try:
            with _quiet_stderr():
                _trace_onnx(wrapper, _example(wrapper, *trace_shape), path, axes, opset, dynamo)
        except Exception:  # noqa: BLE001 - an op the exporter cannot express with these axes dynamic
            if not axes:
                raise
            continue
        other = requested if trace_shape != requested else _probe_shape(requested, axes)
        if axes:
            _report(progress, f"checking the dynamic axes with onnxruntime at {_shape_name(other)}")
        if not axes or _onnx_agrees(path, wrapper, other) is not None:
            traced, kept = trace_shape, axes
            break
    multiple = 1
    if "height" in kept:
        _report(progress, f"checking a size off the multiples of 32: {_shape_name(_probe_shape(traced, kept, False))}")
    if "height" in kept and _onnx_agrees(path, wrapper, _probe_shape(traced, kept, aligned=False)) is None:
        multiple = 32
    metadata = _metadata(model, wrapper, traced, kept)
    metadata["size_step"] = multiple
    _attach_metadata(path, metadata)
    diffs = check_onnx(model, path, [requested] + ([_probe_shape(requested, kept)] if kept else []),
                       with_preprocess=with_preprocess, input_order=input_order, slide_in_graph=slide_in_graph,
                       progress=progress)
    return ExportResult(path, "onnx", traced, kept, diffs, metadata)


def _shape_name(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


def _report(progress: ProgressCallback | None, step: str) -> None:
    if progress is not None:
        progress(step)


def check_onnx(
    model: nn.Module,
    path: str | Path,
    shapes: Sequence[Sequence[int]],
    *,
    with_preprocess: bool = False,
    input_order: str = "bgr",
    slide_in_graph: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, float]:
    """Run the exported graph with onnxruntime and the PyTorch model on the same random inputs of each
    (N, H, W) in ``shapes``; returns the max abs difference of the logits per shape (``'NxHxW'``).
    ``progress`` hears each comparison before it runs."""
    wrapper = _wrap(model, with_preprocess, input_order, slide_in_graph)
    session = _session(path)
    diffs = {}
    for index, shape in enumerate(shapes):
        _report(progress, f"comparing onnxruntime with PyTorch at {_shape_name(shape)}")
        x = _example(wrapper, *shape, seed=2 + index)
        diffs[_shape_name(shape)] = _max_abs_diff(_torch_outputs(wrapper, x)[-1:],
                                                  _run_session(session, x.cpu().numpy())[-1:])
    return diffs


def _compare(module, wrapper: ExportedSegmentor, shapes: Sequence[tuple[int, int, int]],
             progress: ProgressCallback | None) -> dict[str, float]:
    """Max abs difference of the logits of a reloaded ``module`` and the PyTorch model per (N, H, W)."""
    diffs = {}
    for index, shape in enumerate(shapes):
        _report(progress, f"comparing the exported module with PyTorch at {_shape_name(shape)}")
        x = _example(wrapper, *shape, seed=2 + index)
        with torch.no_grad():
            out = module(x)
        got = [o.cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]
        diffs[_shape_name(shape)] = _max_abs_diff(_torch_outputs(wrapper, x)[-1:], got[-1:])
    return diffs


def _torchscript_agrees(module, wrapper: ExportedSegmentor, shape: tuple[int, int, int]) -> float | None:
    x = _example(wrapper, *shape, seed=1)
    expected = _torch_outputs(wrapper, x)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception:  # noqa: BLE001 - a trace pinned to its size fails in many ways at another
        return None
    got = [o.cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]
    diff = _max_abs_diff(expected[-1:], got[-1:])
    return diff if diff <= _tolerance(expected) else None


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    shape: Sequence[int] | None = None,
    *,
    batch: int = 1,
    with_preprocess: bool = False,
    input_order: str = "bgr",
    slide_in_graph: bool = False,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Trace ``model`` with ``torch.jit.trace`` and save it (load with ``torch.jit.load``).

    A trace has no declared axes; ``result.dynamic`` names those checked to work at another size (the
    traced module is only valid at the traced size along the others). The metadata is stored as the
    extra file ``semseg.json``. ``progress``: as for :func:`export_onnx`.
    """
    import warnings

    wrapper = _wrap(model, with_preprocess, input_order, slide_in_graph)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = _shape_args(model, shape, batch)
    x = _example(wrapper, *traced)
    _report(progress, f"tracing (torch.jit.trace) at {_shape_name(traced)}")
    with warnings.catch_warnings(), _ExportableOps(), torch.no_grad():
        warnings.simplefilter("ignore")
        module = torch.jit.trace(wrapper, (x,), check_trace=False)
    kept: tuple[str, ...] = ()
    for axes in [("batch", "height", "width"), ("batch",)]:
        _report(progress, f"checking the trace at {_shape_name(_probe_shape(traced, axes))} ({', '.join(axes)})")
        if _torchscript_agrees(module, wrapper, _probe_shape(traced, axes)) is not None:
            kept = axes
            break
    metadata = _metadata(model, wrapper, traced, kept)
    torch.jit.save(module, str(path), _extra_files={"semseg.json": json.dumps(metadata)})
    diffs = _compare(module, wrapper, [traced] + ([_probe_shape(traced, kept)] if kept else []), progress)
    return ExportResult(path, "torchscript", traced, kept, diffs, metadata)


def export_program(
    model: nn.Module,
    path: str | Path,
    shape: Sequence[int] | None = None,
    *,
    batch: int = 1,
    dynamic: bool = True,
    with_preprocess: bool = False,
    input_order: str = "bgr",
    slide_in_graph: bool = False,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """``torch.export`` the model and save the program (``.pt2``; load with ``torch.export.load``).

    With ``dynamic``, batch, height and width are declared ``Dim.AUTO``: torch.export keeps each one
    symbolic unless the model's code fixes it, and ``result.dynamic`` names those it kept. ``progress``: as
    for :func:`export_onnx`.
    """
    wrapper = _wrap(model, with_preprocess, input_order, slide_in_graph)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = _shape_args(model, shape, batch)
    x = _example(wrapper, *traced)
    positions = {"batch": 0, "height": 1, "width": 2} if with_preprocess else {"batch": 0, "height": 2, "width": 3}
    dynamic_shapes = ({index: torch.export.Dim.AUTO for index in positions.values()},) if dynamic else None
    _report(progress, f"torch.export at {_shape_name(traced)}, dynamic axes: "
                      f"{'batch, height, width (where the model allows)' if dynamic else 'none'}")
    with torch.no_grad():
        program = torch.export.export(wrapper, (x,), dynamic_shapes=dynamic_shapes)
    placeholder = next(node for node in program.graph.nodes if node.op == "placeholder"
                       and node.name == program.graph_signature.user_inputs[0])
    sizes = placeholder.meta["val"].shape
    kept = tuple(axis for axis, index in positions.items() if not isinstance(sizes[index], int))
    metadata = _metadata(model, wrapper, traced, kept)
    torch.export.save(program, str(path), extra_files={"semseg.json": json.dumps(metadata)})
    module = program.module()
    diffs = _compare(module, wrapper, [traced] + ([_probe_shape(traced, kept)] if kept else []), progress)
    return ExportResult(path, "pt2", traced, kept, diffs, metadata)


class OnnxSegmentor:
    """Inference with an exported ONNX file and onnxruntime, no PyTorch model needed.

    ``segmentor(x)`` takes what the graph takes (normalized float32 (N, 3, H, W), or uint8 (N, H, W, 3)
    images for a ``with_preprocess`` export) at any size the file allows and returns logits
    (N, C, H, W). For a slide-mode export it tiles the image into the metadata's crop windows (the same
    windows as :func:`~semseg.models.inference.slide_windows`), runs the crop model on each and averages
    the overlapping logits. :meth:`predict` returns labels (N, H, W).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: was it written by semseg export?")
        self.metadata = json.loads(props[METADATA_KEY])
        self.input_name = self.session.get_inputs()[0].name
        self.output_index = len(self.session.get_outputs()) - 1  # logits come last

    def _network(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[self.output_index]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.metadata["mode"] != "slide":
            return self._network(x)
        hwc = bool(self.metadata["with_preprocess"])
        batch, height, width = (x.shape[0], *x.shape[1:3]) if hwc else (x.shape[0], *x.shape[2:])
        logits = np.zeros((batch, self.metadata["out_channels"], height, width), dtype=np.float32)
        counts = np.zeros((1, 1, height, width), dtype=np.float32)
        for y1, y2, x1, x2 in slide_windows(height, width, self.metadata["crop_size"], self.metadata["stride"]):
            crop = x[:, y1:y2, x1:x2] if hwc else x[:, :, y1:y2, x1:x2]
            logits[:, :, y1:y2, x1:x2] += self._network(np.ascontiguousarray(crop))
            counts[:, :, y1:y2, x1:x2] += 1
        return logits / counts

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Labels (N, H, W) int64: argmax over classes; a one-channel model thresholds the sigmoid at the
        head's ``threshold``."""
        logits = self(x)
        if logits.shape[1] == 1:
            probabilities = 1 / (1 + np.exp(-logits[:, 0]))
            return (probabilities > self.metadata["threshold"]).astype(np.int64)
        return logits.argmax(axis=1)


def describe(result: ExportResult) -> list[str]:
    """The lines ``semseg export`` prints about a result."""
    size = os.path.getsize(result.path) / 2**20
    dynamic = ", ".join(result.dynamic) if result.dynamic else "none (fixed shape)"
    lines = [f"wrote {result.path} ({result.format}, {size:.1f} MiB)",
             f"traced input: {_shape_name(result.shape)} (N x H x W); dynamic axes: {dynamic}",
             f"mode: {result.metadata.get('mode')}"
             + (f", crop {_shape_name(result.metadata['crop_size'])}, stride {_shape_name(result.metadata['stride'])}"
                " (run the crop loop with semseg.export.OnnxSegmentor)" if result.metadata.get("mode") == "slide"
                else "")]
    for shape, diff in result.max_abs_diff.items():
        lines.append(f"max abs difference vs PyTorch at {shape}: {diff:.3g}")
    return lines
