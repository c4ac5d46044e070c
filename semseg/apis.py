"""High-level API: build a model from a config (zoo name, path or dict), run it on images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from semseg.build import build
from semseg.config import Config, load_config
from semseg.data.transforms import Compose
from semseg.engine.checkpoint import load_checkpoint
from semseg.models.inference import check_precision, predict_views
from semseg.nn.fuse import fuse as fuse_batchnorm
from semseg.zoo import model_info


@dataclass
class SegResult:
    """A prediction at the image's original size: ``labels`` (H, W) int64 and ``logits`` (C, H, W)
    (class probabilities instead, when test-time augmentation averaged them)."""

    labels: np.ndarray
    logits: torch.Tensor


def init_model(
    config: str | Path | dict | Config,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    cfg_options: dict | list[str] | None = None,
    strict: bool = True,
    *,
    precision: str = "fp32",
    fuse: bool = False,
    channels_last: bool = False,
    inference_mode: bool = False,
    compile: bool | dict = False,
) -> torch.nn.Module:
    """Build the segmentor a config describes, load weights (path, URL or the zoo's ``'zoo'`` shortcut),
    and put it in eval mode on ``device``. The config is kept as ``model.cfg``.

    ``checkpoint='zoo'`` loads the weights URL the manifest lists for a zoo name.

    Inference speed options (all off by default, which is the exact path):
        precision: ``'fp32'``, ``'bf16'``, or ``'fp16'`` (CUDA only): the network runs under autocast;
            resizes, softmax and argmax stay in float32. Kept as ``model.precision``.
        fuse: fold BatchNorm into the preceding convolutions (:func:`semseg.fuse`); the model's state dict
            then no longer matches MMSegmentation checkpoints (inference only).
        channels_last: weights and inputs in channels-last memory format.
        inference_mode: ``model.inference`` runs under ``torch.inference_mode``.
        compile: ``torch.compile`` the network forward (``True``: inductor with the weights frozen as
            constants, see :meth:`~semseg.models.segmentor.EncoderDecoder.compile_network`; or a dict of
            its arguments,
            e.g. ``dict(backend='aot_eager')``); the first call's duration (compilation included) is kept as
            ``model.compile_seconds``.
    """
    check_precision(precision, device)
    if compile is not False and not (compile is True or isinstance(compile, dict)):
        raise TypeError(f"compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
    cfg = load_config(config, cfg_options)
    if "model" not in cfg:
        raise KeyError(f"config {cfg.filename or config!r} has no 'model' entry")
    model_cfg = cfg.model.to_dict()
    model = build("segmentor", model_cfg)
    if checkpoint == "zoo":
        checkpoint = model_info(Path(str(config)).stem)["weights"]
        if checkpoint is None:
            raise KeyError(f"the zoo lists no weights for {config!r} (see its notes: `semseg zoo`)")
    if checkpoint is not None:
        result = load_checkpoint(model, checkpoint, strict=strict)
        dataset_meta = result.meta.get("dataset_meta") if isinstance(result.meta, dict) else None
        if isinstance(dataset_meta, dict) and dataset_meta.get("classes"):
            model.dataset_meta = {key: dataset_meta[key] for key in ("classes", "palette") if key in dataset_meta}
    model.cfg = cfg
    model = model.to(device).eval()
    if fuse:
        fuse_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.precision = precision
    model.channels_last = channels_last
    model.use_inference_mode = inference_mode
    if compile is not False:
        # inference weights never change after compiling, so inductor may treat them as constants
        model.compile_network(**(compile if isinstance(compile, dict) else {"freeze_weights": True}))
    return model


def _pipeline(cfg: Config | None, from_array: bool, tta: bool) -> Compose:
    """The config's ``test_pipeline`` (as MMSegmentation's ``inference_model`` reads it; else the test
    dataloader's), or with ``tta`` its ``tta_pipeline``, without annotation loading; an array input
    starts with LoadImageFromNDArray."""
    plain = cfg.to_dict() if cfg is not None else {}
    if tta:
        if not plain.get("tta_pipeline"):
            name = getattr(cfg, "filename", None) or "the model's config"
            raise KeyError(f"test-time augmentation needs the config's tta_pipeline (a TestTimeAug step); "
                           f"{name} has none")
        steps = [dict(step) for step in plain["tta_pipeline"]]
        for step in steps:
            if step["type"] == "TestTimeAug":
                options = [[t for t in group if t["type"] != "LoadAnnotations"] for group in step["transforms"]]
                step["transforms"] = [group for group in options if group]
    else:
        steps = plain.get("test_pipeline") or plain.get("test_dataloader", {}).get("dataset", {}).get("pipeline")
        steps = [dict(step) for step in steps or [dict(type="LoadImageFromFile"), dict(type="PackSegInputs")]]
        steps = [step for step in steps if step["type"] != "LoadAnnotations"]
    if from_array:
        steps[0]["type"] = "LoadImageFromNDArray"
    return Compose(steps)


@torch.no_grad()
def inference_model(model: torch.nn.Module, image: str | Path | np.ndarray, tta: bool = False) -> SegResult:
    """Run the config's test pipeline and inference on one image (path, or (H, W, 3) BGR uint8 array).

    Returns the label map and logits at the image's original size. ``tta`` runs the config's
    ``tta_pipeline`` (scales x flips) and averages the views' class probabilities, as MMSegmentation's
    ``--tta`` does; ``logits`` then holds those probabilities.
    """
    from_array = isinstance(image, np.ndarray)
    packed = _pipeline(getattr(model, "cfg", None), from_array, tta)({"img": image} if from_array else
                                                                   {"img_path": str(image)})
    views = packed if isinstance(packed, list) else [packed]
    scores, probabilities = predict_views(model, views, next(model.parameters()).device)
    labels = model.predict_labels(scores, probabilities=probabilities)[0]
    return SegResult(labels=labels.cpu().numpy(), logits=scores[0].cpu())


def palette_for(num_classes: int, seed: int = 0) -> np.ndarray:
    """A fixed random color per class: (num_classes, 3) uint8 (BGR)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)


def show_result(
    image: str | Path | np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray | None = None,
    opacity: float = 0.5,
    out_file: str | Path | None = None,
) -> np.ndarray:
    """Blend a colored label map over the image (BGR); optionally write it to ``out_file``."""
    if not isinstance(image, np.ndarray):
        from semseg.data.transforms import read_image

        image = read_image(image)
    if palette is None:
        palette = palette_for(int(labels.max()) + 1)
    colors = np.zeros_like(image)
    valid = labels < len(palette)
    colors[valid] = palette[labels[valid]]
    blended = (image * (1 - opacity) + colors * opacity).astype(np.uint8)
    if out_file is not None:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out_file), blended):
            raise OSError(f"could not write {out_file}")
    return blended
