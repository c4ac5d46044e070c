"""High-level API: build a model from a config (zoo name, path or dict), run it on images."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from semseg.build import accepted_arguments, build, lookup
from semseg.config import Config, load_config
from semseg.config_check import check_config
from semseg.data.transforms import Compose
from semseg.engine.checkpoint import load_checkpoint
from semseg.models.inference import check_precision, predict_views, restore_view
from semseg.nn.fuse import fuse as fuse_batchnorm
from semseg.nn.onednn import to_onednn
from semseg.visualize import colorize, legend, palette_for, write_image
from semseg.visualize import overlay as overlay_labels
from semseg.zoo import manifest, model_info

__all__ = ["SegResult", "classes_and_palette", "config_dataset_meta", "inference_model", "init_model", "palette_for",
           "show_result"]


@dataclass
class SegResult:
    """A prediction at the image's original size: ``labels`` (H, W) int64 and ``logits`` (C, H, W)
    (class probabilities instead, when test-time augmentation averaged them).

    ``image`` is the input (a (H, W, 3) BGR array, or its path), ``classes`` and ``palette`` (K, 3) RGB the
    dataset's; with them the result draws itself (:meth:`mask`, :meth:`overlay`) and shows as a picture
    in Jupyter (an overlay beside a legend of the classes present).
    """

    labels: np.ndarray
    logits: torch.Tensor = field(repr=False)
    image: np.ndarray | str | Path | None = field(default=None, repr=False)
    classes: Sequence[str] | None = field(default=None, repr=False)
    palette: np.ndarray | None = field(default=None, repr=False)

    def _colors_bgr(self) -> np.ndarray:
        count = max(int(self.labels.max()) + 1 if self.labels.size else 1, len(self.classes or ()))
        known = np.zeros((0, 3), np.uint8) if self.palette is None else np.asarray(self.palette, np.uint8)[:, ::-1]
        return np.concatenate([known, palette_for(count)[len(known):]])

    def mask(self) -> np.ndarray:
        """The label map in the classes' colors: (H, W, 3) uint8 BGR."""
        return colorize(self.labels, self._colors_bgr())

    def overlay(self, opacity: float = 0.5) -> np.ndarray:
        """The colored label map blended over the input image: (H, W, 3) uint8 BGR (the mask alone when
        the result holds no image)."""
        if self.image is None:
            return self.mask()
        image = self.image
        if not isinstance(image, np.ndarray):
            from semseg.data.transforms.loading import read_image

            image = read_image(image)
        return overlay_labels(image, self.labels, self._colors_bgr(), opacity)

    def present(self) -> list[int]:
        """The classes that occur in the label map, ascending."""
        return [int(k) for k in np.unique(self.labels)]

    def _repr_png_(self) -> bytes:
        """Jupyter's picture of the result: the overlay with a legend of the classes present on its right."""
        picture = self.overlay()
        present = self.present()
        names = [self.classes[k] if self.classes and k < len(self.classes) else f"class {k}" for k in present]
        key = legend(names, self._colors_bgr()[present])
        height = max(picture.shape[0], key.shape[0])
        canvas = np.full((height, picture.shape[1] + key.shape[1], 3), 255, dtype=np.uint8)
        canvas[:picture.shape[0], :picture.shape[1]] = picture
        canvas[:key.shape[0], picture.shape[1]:] = key
        return cv2.imencode(".png", canvas)[1].tobytes()

    def __repr__(self) -> str:
        height, width = self.labels.shape
        names = [self.classes[k] if self.classes and k < len(self.classes) else str(k) for k in self.present()]
        return f"SegResult({width}x{height}, classes present: {', '.join(names)})"


def _random_weights_message(name: str) -> str:
    """What a zoo name without a checkpoint gives (random weights) and how to get the published ones."""
    entry = manifest().get(name) or {}
    start = f"init_model({name!r}) got no checkpoint, so the model's weights are random (untrained). "
    if not entry.get("weights"):
        return start + ("The zoo lists no published weights for it: pass checkpoint=<path or URL> of your own "
                        f"(e.g. from `semseg train {name}`).")
    metrics = ", ".join(f"{key} {value}" for key, value in (entry.get("metrics") or {}).items() if value is not None)
    published = f" ({entry.get('dataset', '')} {metrics})" if metrics else ""
    return start + (f"For the published weights{published} pass checkpoint='zoo', which downloads "
                    f"{entry['weights']}; or pass checkpoint=<path or URL>.")


def _dataset_config(cfg: Config) -> dict | None:
    """The config's test (else val, else train) dataset dict, unwrapped from Repeat/ConcatDataset."""
    plain = cfg.to_dict()
    for key in ("test_dataloader", "val_dataloader", "train_dataloader"):
        dataset = (plain.get(key) or {}).get("dataset")
        while isinstance(dataset, dict) and dataset.get("type") in ("RepeatDataset", "ConcatDataset"):
            dataset = dataset.get("dataset") or (dataset.get("datasets") or [None])[0]
        if isinstance(dataset, dict) and dataset.get("type"):
            return dataset
    return None


def config_dataset_meta(cfg: Config) -> dict | None:
    """``classes`` and ``palette`` (RGB) of the config's dataset, as the dataset itself reports them (its
    class's METAINFO with the config's ``metainfo`` overrides), without listing its files; None when the
    config names no dataset or it cannot be built here."""
    dataset = _dataset_config(cfg)
    if dataset is None:
        return None
    options = {**dataset, "pipeline": []}
    try:
        accepted = accepted_arguments(lookup("dataset", dataset["type"]))
        if accepted is None or "lazy_init" in accepted:
            options["lazy_init"] = True
        metainfo = build("dataset", options).metainfo
    except Exception:  # a dataset this machine cannot set up still leaves the model usable
        return None
    return {key: metainfo[key] for key in ("classes", "palette") if metainfo.get(key) is not None} or None


def classes_and_palette(model: torch.nn.Module) -> tuple[list[str], np.ndarray]:
    """The model's class names and colors ((K, 3) uint8 RGB), from ``model.dataset_meta`` (the checkpoint's
    meta, else the config's dataset); classes without a name are ``'class <k>'`` and those without a color
    get a fixed random one. K covers both the model's classes and the names given."""
    meta = getattr(model, "dataset_meta", None) or {}
    names = [str(name) for name in meta.get("classes") or ()]
    count = max(int(getattr(model, "num_classes", 0) or 0), len(names), 1)
    names += [f"class {k}" for k in range(len(names), count)]
    palette = meta.get("palette")
    given = np.zeros((0, 3), np.uint8) if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)[:count]
    return names, np.concatenate([given, palette_for(count)[len(given):]])


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
    onednn: bool = False,
) -> torch.nn.Module:
    """Build the segmentor a config describes, load weights (path, URL or the zoo's ``'zoo'`` shortcut),
    and put it in eval mode on ``device``. The config is kept as ``model.cfg``.

    ``checkpoint='zoo'`` loads the weights URL the manifest lists for a zoo name; a zoo name without a
    checkpoint gives random weights, with a warning that says how to get the published ones.
    ``model.dataset_meta`` holds the class names and palette (RGB): the checkpoint's meta, else the config's
    dataset's.

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
        onednn: CPU float32 only: convolution weights prepacked for oneDNN once, and a ResNet backbone kept
            in oneDNN's blocked layout (:func:`semseg.nn.onednn.to_onednn`); the state dict is unchanged,
            logits within 1e-5 of the exact path.
    """
    check_precision(precision, device)
    if onednn and (precision != "fp32" or channels_last or compile is not False or torch.device(device).type != "cpu"):
        raise ValueError("onednn is a CPU float32 option: it does not combine with precision, channels_last, "
                         "compile or a non-CPU device")
    if compile is not False and not (compile is True or isinstance(compile, dict)):
        raise TypeError(f"compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
    cfg = load_config(config, cfg_options)
    check_config(cfg)
    if "model" not in cfg:
        raise KeyError(f"config {cfg.filename or config!r} has no 'model' entry")
    model_cfg = cfg.model.to_dict()
    model = build("segmentor", model_cfg)
    if checkpoint is None and isinstance(config, (str, Path)) and not Path(config).is_file():
        warnings.warn(_random_weights_message(Path(str(config)).name.removesuffix(".py")), UserWarning,
                      stacklevel=2)
    if checkpoint == "zoo":
        checkpoint = model_info(Path(str(config)).stem)["weights"]
        if checkpoint is None:
            raise KeyError(f"the zoo lists no weights for {config!r} (see its notes: `semseg zoo`)")
    if checkpoint is not None:
        result = load_checkpoint(model, checkpoint, strict=strict)
        dataset_meta = result.meta.get("dataset_meta") if isinstance(result.meta, dict) else None
        if isinstance(dataset_meta, dict) and dataset_meta.get("classes"):
            model.dataset_meta = {key: dataset_meta[key] for key in ("classes", "palette") if key in dataset_meta}
    if not getattr(model, "dataset_meta", None):
        from_config = config_dataset_meta(cfg)
        if from_config:
            model.dataset_meta = from_config
    model.cfg = cfg
    model = model.to(device).eval()
    if fuse:
        fuse_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if onednn:
        to_onednn(model)
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
def inference_model(
    model: torch.nn.Module,
    image: str | Path | np.ndarray | Sequence[str | Path | np.ndarray],
    tta: bool = False,
    batch_size: int = 1,
) -> SegResult | list[SegResult]:
    """Run the config's test pipeline and inference on an image (path, or (H, W, 3) BGR uint8 array), or
    on a list of them (a list of results).

    Returns the label map and logits at the image's original size, with the image and the model's classes
    and palette (so the result can draw itself). ``tta`` runs the config's ``tta_pipeline`` (scales x
    flips) and averages the views' class probabilities, as MMSegmentation's ``--tta`` does; ``logits`` then
    holds those probabilities. Without ``tta``, images of a list whose network inputs have the same size
    go through the network ``batch_size`` at a time.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number of images, got {batch_size!r}")
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    cfg = getattr(model, "cfg", None)
    pipelines = {from_array: _pipeline(cfg, from_array, tta) for from_array in (False, True)}
    device = next(model.parameters()).device
    classes, palette = classes_and_palette(model)
    packed = [pipelines[isinstance(item, np.ndarray)]({"img": item} if isinstance(item, np.ndarray)
                                                      else {"img_path": str(item)}) for item in images]
    labels: list[torch.Tensor | None] = [None] * len(images)
    scores: list[torch.Tensor | None] = [None] * len(images)
    batches: dict[tuple[int, ...], list[int]] = {}  # input shape -> indices of the images of that shape
    for index, views in enumerate(packed):
        if isinstance(views, list):  # TestTimeAug: this image's views, averaged
            score, probabilities = predict_views(model, views, device)
            labels[index] = model.predict_labels(score, probabilities=probabilities)[0]
            scores[index] = score[0]
        else:
            batches.setdefault(tuple(views["inputs"].shape), []).append(index)
    for indices in batches.values():
        for start in range(0, len(indices), int(batch_size)):
            chunk = indices[start:start + int(batch_size)]
            x = model.data_preprocessor([packed[i]["inputs"].to(device) for i in chunk])[0]
            logits = model.inference(x)
            for row, index in enumerate(chunk):
                score = restore_view(model, logits[row:row + 1], packed[index]["meta"])
                labels[index] = model.predict_labels(score)[0]
                scores[index] = score[0]
    results = [SegResult(labels=label.cpu().numpy(), logits=score.cpu(), image=item, classes=classes,
                         palette=palette)
               for label, score, item in zip(labels, scores, images, strict=True)]
    return results if isinstance(image, (list, tuple)) else results[0]


def show_result(
    image: str | Path | np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray | None = None,
    opacity: float = 0.5,
    out_file: str | Path | None = None,
) -> np.ndarray:
    """Blend a colored label map (``palette`` (K, 3) BGR; default: a fixed random color per class) over
    the image (BGR); optionally write it to ``out_file``."""
    if not isinstance(image, np.ndarray):
        from semseg.data.transforms.loading import read_image

        image = read_image(image)
    if palette is None:
        palette = palette_for(int(labels.max()) + 1)
    blended = overlay_labels(image, labels, palette, opacity)
    if out_file is not None:
        write_image(out_file, blended)
    return blended
