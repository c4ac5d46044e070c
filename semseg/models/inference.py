"""Inference strategies as plain functions over a segmentor and a normalized batch.

Each takes ``model`` (anything with ``encode_decode(x) -> logits at x's size`` and ``out_channels``)
and x (N, 3, H, W), and returns logits (N, C, H, W) at x's size.

Also the precision names (``'fp32'``, ``'bf16'``, ``'fp16'``) and the autocast context they stand for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from semseg.nn import resize

# Crops per forward pass in slide inference when test_cfg sets no `batch_size`. Measured on a 2-core CPU
# (2 threads, s/image for batch sizes 1 / 2 / 4 / 8): slim FCN-R18 (the synthetic config), 96x96 crops on
# 256x512: 0.165 / 0.115 / 0.090 / 0.073; 192x192 crops on 512x1024: 0.48 / 0.35 / 0.31 / 0.36;
# DeepLabV3+ R50-D8, 193x193 crops on 320x640: 3.5 / 3.2 / 3.0 (1 / 2 / 4). So 4 is the fast setting, but
# a batched convolution may round differently from MMSegmentation's crop-by-crop one (PSANet: 2.6e-3 on
# logits of 950, over the conformance tolerance), so the default stays 1: the exact window-by-window loop.
DEFAULT_SLIDE_BATCH_SIZE = 1

log = logging.getLogger(__name__)

# Crop of the whole-inference fallback when neither test_cfg nor the data preprocessor names one.
DEFAULT_FALLBACK_CROP = (512, 512)
# How an allocator says it ran out: CUDA's OutOfMemoryError, and the CPU allocator's RuntimeErrors.
_OUT_OF_MEMORY = ("out of memory", "not enough memory", "can't allocate memory")

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise when ``precision`` is not one of :data:`PRECISIONS` or cannot run on ``device`` (fp16: CUDA only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp16" and device_type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (got {device_type!r}); on a CPU use 'bf16'")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """``torch.autocast`` at ``precision`` on ``device``'s type; ``'fp32'`` changes nothing (an outer autocast,
    such as the trainer's, stays in force)."""
    check_precision(precision, device)
    if PRECISIONS[precision] is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision]):
        yield


def whole_inference(model, x: torch.Tensor) -> torch.Tensor:
    """One forward pass over the whole image."""
    return model.encode_decode(x)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator running out of memory (CUDA, or the CPU's DefaultCPUAllocator)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _OUT_OF_MEMORY)


def fallback_window(model, test_cfg: Mapping) -> tuple[tuple[int, int], tuple[int, int]]:
    """Crop and stride of the slide inference that replaces whole inference: ``test_cfg``'s ``crop_size``
    and ``stride`` when it has them, else the size the data preprocessor pads training crops to, else
    :data:`DEFAULT_FALLBACK_CROP`; the stride defaults to two thirds of the crop (MMSegmentation's 512/341)."""
    crop = test_cfg.get("crop_size") or getattr(getattr(model, "data_preprocessor", None), "size", None) \
        or DEFAULT_FALLBACK_CROP
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
    stride = test_cfg.get("stride") or (crop_h - crop_h // 3, crop_w - crop_w // 3)
    stride_h, stride_w = (stride, stride) if isinstance(stride, int) else (int(stride[0]), int(stride[1]))
    return (crop_h, crop_w), (stride_h, stride_w)


def whole_or_slide(model, x: torch.Tensor, test_cfg: Mapping) -> torch.Tensor:
    """Whole inference, falling back to slide inference (with a logged message) where ``test_cfg`` asks:

    - ``max_whole_pixels``: a forward pass over more pixels (batch x height x width) than this is not
      tried: an estimate of the memory from the input's size, set from what fits on the device;
    - ``fallback_slide=True``: whole inference that runs out of memory (``torch.OutOfMemoryError`` on
      CUDA, the CPU allocator's "not enough memory") is done again by slide inference.

    The slide's crop and stride are :func:`fallback_window`'s. Without either key this is
    :func:`whole_inference`.
    """
    batch, _, height, width = x.shape
    limit = test_cfg.get("max_whole_pixels")
    if limit is not None and batch * height * width > limit:
        reason = f"{batch} x {height} x {width} input pixels are over max_whole_pixels={limit}"
    elif not test_cfg.get("fallback_slide", False):
        return whole_inference(model, x)
    else:
        try:
            return whole_inference(model, x)
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(error):
                raise
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            message = message[message.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in message else message
            reason = f"whole inference on {batch} x {height} x {width} ran out of memory ({message[:160]})"
        # out of the except block: the error's frames (and the tensors they hold) are released by now
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
    crop, stride = fallback_window(model, test_cfg)
    log.warning("%s: falling back to slide inference (crop %s, stride %s)", reason, crop, stride)
    return slide_inference(model, x, crop, stride,
                           batch_size=test_cfg.get("batch_size", DEFAULT_SLIDE_BATCH_SIZE),
                           accumulate_device=test_cfg.get("accumulate_device"),
                           accumulate_dtype=test_cfg.get("accumulate_dtype"))


def slide_windows(height: int, width: int, crop: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Crop windows ``(y1, y2, x1, x2)`` that tile an image as MMSegmentation's slide inference does.

    Windows start every ``stride`` pixels; the last one in each direction is shifted back to end at the
    border, and a crop larger than the image is clipped to it.
    """
    crop_h, crop_w = crop
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * stride_h + crop_h, height)
            x2 = min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def _dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``'float16'`` / ``'bfloat16'`` / ``'float32'`` / ``'float64'`` (as configs write them) or a dtype."""
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"accumulate_dtype must name a floating dtype ('float32', 'bfloat16', ...), got {value!r}")
    return dtype


def slide_inference(
    model,
    x: torch.Tensor,
    crop_size: Sequence[int],
    stride: Sequence[int],
    batch_size: int = DEFAULT_SLIDE_BATCH_SIZE,
    accumulate_device: str | torch.device | None = None,
    accumulate_dtype: str | torch.dtype | None = None,
) -> torch.Tensor:
    """Average the logits of overlapping crops (each crop's logits at the crop's size).

    Every window has the same size (border windows are shifted back), so the crops stack into batches.
    A window's crops of all N images always go through the network together, and several windows may
    join them. ``batch_size`` caps the crops of one forward pass: ``max(1, batch_size // N)`` windows
    (N * that many crops) per pass. 1 is MMSegmentation's window-by-window loop, exactly.

    Each crop's logits are added into one (N, C, H, W) buffer by slicing (no crop is padded to the image
    size). ``accumulate_device`` and ``accumulate_dtype`` (e.g. ``'cpu'``, ``'bfloat16'``) keep that
    buffer elsewhere or smaller for huge images; the result is returned on that device and in that dtype.
    By default the buffer is on x's device in x's dtype.
    """
    if int(batch_size) < 1:
        raise ValueError(f"slide batch_size must be a positive number of crops, got {batch_size!r}")
    batch, _, height, width = x.shape
    device = x.device if accumulate_device is None else torch.device(accumulate_device)
    dtype = _dtype(accumulate_dtype) or x.dtype
    logits = torch.zeros((batch, model.out_channels, height, width), device=device, dtype=dtype)
    counts = torch.zeros((1, 1, height, width), device=device, dtype=dtype)
    windows = slide_windows(height, width, crop_size, stride)
    per_pass = max(1, int(batch_size) // batch)
    for start in range(0, len(windows), per_pass):
        group = windows[start:start + per_pass]
        if len(group) == 1:
            y1, y2, x1, x2 = group[0]
            outputs = [model.encode_decode(x[:, :, y1:y2, x1:x2])]
        else:
            crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group])  # (G * N, 3, h, w)
            outputs = model.encode_decode(crops).unflatten(0, (len(group), batch))  # (G, N, C, h, w)
        for (y1, y2, x1, x2), crop_logits in zip(group, outputs, strict=True):
            logits[:, :, y1:y2, x1:x2] += crop_logits.to(device=device, dtype=dtype)
            counts[:, :, y1:y2, x1:x2] += 1
    return logits.div_(counts)


def restore_view(model, scores: torch.Tensor, meta: dict) -> torch.Tensor:
    """Logits of one augmented view (1, C, H', W') back on the original image: crop the padding to
    ``img_shape``, undo the view's flip, resize (bilinear, float32) to ``ori_shape``."""
    height, width = meta["img_shape"]
    scores = scores[:, :, :height, :width].float()  # resized (and argmaxed) in float32 at any precision
    if meta.get("flip"):
        flip_dims = {"horizontal": [3], "vertical": [2], "diagonal": [2, 3]}[meta.get("flip_direction", "horizontal")]
        scores = scores.flip(flip_dims)
    return resize(scores, size=tuple(meta["ori_shape"]), mode="bilinear", align_corners=model.align_corners,
                  warning=False)


def merge_views(model, views: Sequence[tuple[torch.Tensor, dict]]) -> torch.Tensor:
    """Test-time augmentation over pipeline views, as MMSegmentation's ``--tta``: each view
    ``(x (1, 3, H', W') normalized, meta)`` is inferred (whole or slide), restored to the original image,
    turned into probabilities (softmax; sigmoid for one channel) and averaged -> (1, C, H, W)."""
    total = None
    for x, meta in views:
        logits = restore_view(model, model.inference(x), meta)
        probs = logits.sigmoid() if logits.shape[1] == 1 else F.softmax(logits, dim=1)
        total = probs if total is None else total + probs
    return total / len(views)


def predict_views(model, views: Sequence[dict], device: torch.device) -> tuple[torch.Tensor, bool]:
    """Scores on the original image for one image's packed views (``inputs`` (3, H', W') as loaded,
    ``meta``): one view gives its restored logits, several (from ``TestTimeAug``) their averaged class
    probabilities. Returns ``(scores (1, C, H, W), are_probabilities)``."""
    prepared = [(model.data_preprocessor([view["inputs"].to(device)])[0], view["meta"]) for view in views]
    if len(prepared) == 1:
        x, meta = prepared[0]
        return restore_view(model, model.inference(x), meta), False
    return merge_views(model, prepared), True
