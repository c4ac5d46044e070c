"""Speed, memory and FLOPs of a config's model, as MMSegmentation's benchmark page measures them.

- Inference: the time of the network's forward plus post-processing (crop the padding, resize to the
  original size, argmax) per image, one image per forward, data loading and normalization excluded (each
  image is loaded and put on the device before its timer starts), averaged over ``num_images`` after
  ``warmup`` images; ``test_cfg`` (whole or slide) runs as inference runs it.
- Training: seconds per iteration (forward, loss, backward, optimizer step) at the config's crop and batch
  on synthetic batches (random normalized images, random labels among the classes), warm-up excluded;
  under ``torchrun`` every rank times its own iterations and the slowest rank is the job's figure.
- Complexity: parameters and FLOPs (a multiply-add counts as one, as mmengine and MMSegmentation's
  ``get_flops`` count) of the forward inference runs, and the achieved GFLOP/s of the measured forward.

Peak memory is ``torch.cuda.max_memory_allocated()`` after a reset on GPUs; on CPUs it is the process's
peak resident set (``ru_maxrss``), which covers the whole process and never decreases.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from semseg.build import build
from semseg.config import Config, load_config
from semseg.engine import distributed
from semseg.models.inference import restore_view, slide_windows

ProgressCallback = Callable[[int, int], None]  # (done, total)
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
PRECISIONS = ("fp32", "bf16", "fp16")
RSS_NOTE = "process peak resident set (ru_maxrss): covers the whole process and never decreases"
CUDA_NOTE = "torch.cuda.max_memory_allocated() after reset_peak_memory_stats()"


@dataclass
class Spread:
    """Mean, sample standard deviation, min and max of the per-run figures in ``values``."""

    mean: float
    std: float
    min: float
    max: float
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = [float(v) for v in values]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(mean=statistics.fmean(values), std=std, min=min(values), max=max(values), values=values)


@dataclass
class Memory:
    """Peak memory in MiB and what was measured (``kind`` 'cuda' or 'process')."""

    peak_mib: float
    kind: str
    note: str


@dataclass
class ImageSource:
    """Where the benchmark's images come from: ``load(i)`` gives image i as loaded ((3, H, W) uint8, BGR
    from cv2, before normalization) and its meta (``img_shape``, ``ori_shape``)."""

    description: str
    load: Callable[[int], tuple[torch.Tensor, dict]]
    synthetic: bool


@dataclass
class ComplexityResult:
    """Parameters and FLOPs of the forward passes inference runs on one image of ``shape`` (H, W): one
    forward at the image size (whole), or one per crop (slide)."""

    shape: tuple[int, int]
    forward_shape: tuple[int, int]
    forwards_per_image: int
    params: int
    flops_per_forward: int
    flops_per_image: int
    convention: str


@dataclass
class InferenceResult:
    """Seconds per image (forward + post-processing) over ``repeat`` runs, and what was run."""

    mode: str  # whole / slide with its crop and stride
    precision: str
    images: str  # where the images came from
    synthetic: bool
    num_images: int
    warmup: int
    seconds_per_image: Spread
    images_per_second: float
    warmup_seconds: float  # the warm-up images together (compilation, allocator and cudnn warm-up)
    first_image_seconds: float
    compile_seconds: float | None  # the first, compiling call of a compiled network (in the warm-up)
    memory: Memory
    input_shapes: list[tuple[int, int]]  # the distinct (H, W) of the network's inputs
    flops_per_image: int | None = None
    gflops_per_second: float | None = None  # a multiply-add counts as one FLOP


@dataclass
class TrainResult:
    """Seconds per training iteration over ``repeat`` runs, and what was run."""

    batch_size: int
    crop_size: tuple[int, int]
    amp: str
    optimizer: str
    iters: int
    warmup: int
    seconds_per_iter: Spread  # the slowest rank's per-run figures
    warmup_seconds: float
    first_iter_seconds: float
    memory: Memory  # the largest over ranks
    world_size: int = 1
    rank_seconds_per_iter: list[float] = field(default_factory=list)
    slowest_rank: int = 0


@dataclass
class BenchmarkReport:
    """What ``semseg benchmark`` measured, with the machine and the options (``to_dict`` for JSON)."""

    config: str
    device: str
    device_name: str
    torch_version: str
    threads: int
    cudnn_benchmark: bool
    options: dict[str, Any]
    inference: InferenceResult | None = None
    train: TrainResult | None = None
    complexity: ComplexityResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples become lists)."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------- helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> Memory:
    """CUDA: the allocator's peak since the last reset; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return Memory(torch.cuda.max_memory_allocated(device) / 2**20, "cuda", CUDA_NOTE)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return Memory(peak / (2**20 if sys.platform == "darwin" else 2**10), "process", RSS_NOTE)


@contextlib.contextmanager
def cudnn_benchmark_set(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` set for a block, then restored."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as given (CUDA only where available), default CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} was asked for, but CUDA is not available here")
    return chosen


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pipeline_steps(dataloader_cfg: dict | None) -> list[dict]:
    """The pipeline of a dataloader's dataset, looking through wrappers (``dataset.dataset``)."""
    dataset = (dataloader_cfg or {}).get("dataset") or {}
    while isinstance(dataset, dict) and "pipeline" not in dataset and isinstance(dataset.get("dataset"), dict):
        dataset = dataset["dataset"]
    return list(dataset.get("pipeline") or []) if isinstance(dataset, dict) else []


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def config_test_size(cfg: Config) -> tuple[int, int] | None:
    """(H, W) of an image the config's test pipeline leaves unchanged: its ``Resize`` scale, which is
    (W, H) (with keep_ratio, the largest image it yields), else the slide crop or the training crop."""
    plain = cfg.to_dict()
    steps = plain.get("test_pipeline") or _pipeline_steps(plain.get("test_dataloader"))
    for step in steps:
        if step.get("type") == "Resize" and (scale := _pair(step.get("scale"))):
            return scale[1], scale[0]
    test_cfg = (plain.get("model") or {}).get("test_cfg") or {}
    return _pair(test_cfg.get("crop_size")) if test_cfg.get("mode") == "slide" else config_crop_size(cfg)


def config_crop_size(cfg: Config) -> tuple[int, int] | None:
    """(H, W) of the training crop: the train pipeline's ``RandomCrop``, else the data preprocessor's
    ``size``, else the config's ``crop_size``."""
    plain = cfg.to_dict()
    steps = plain.get("train_pipeline") or _pipeline_steps(plain.get("train_dataloader"))
    for step in steps:
        if step.get("type") == "RandomCrop" and (crop := _pair(step.get("crop_size"))):
            return crop
    preprocessor = (plain.get("model") or {}).get("data_preprocessor") or {}
    return _pair(preprocessor.get("size")) or _pair(plain.get("crop_size"))


def synthetic_images(shape: Sequence[int], description: str | None = None) -> ImageSource:
    """Random uint8 images of ``shape`` (H, W), image i from seed i."""
    height, width = int(shape[0]), int(shape[1])

    def load(index: int) -> tuple[torch.Tensor, dict]:
        generator = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        return image, {"img_shape": (height, width), "ori_shape": (height, width)}

    return ImageSource(description or f"synthetic {height}x{width}", load, synthetic=True)


def config_images(cfg: Config, shape: Sequence[int] | None = None) -> ImageSource:
    """The config's test set through its pipeline when it can be read; synthetic images of ``shape``
    (H, W) when given, else of the config's test size (:func:`config_test_size`) when the set is missing."""
    if shape is not None:
        return synthetic_images(shape, f"synthetic {shape[0]}x{shape[1]} (--shape)")
    plain = cfg.to_dict()
    dataset_cfg = (plain.get("test_dataloader") or {}).get("dataset")
    reason = "the config has no test_dataloader"
    if dataset_cfg:
        try:
            dataset = build("dataset", dataset_cfg)
            reason = "its test set is empty" if len(dataset) == 0 else ""
        except FileNotFoundError as error:
            reason = f"no test set on disk: {error}"
        if not reason:
            def load(index: int) -> tuple[torch.Tensor, dict]:
                sample = dataset[index % len(dataset)]
                if isinstance(sample, list):
                    raise ValueError("the test pipeline gives several views per image (TestTimeAug); "
                                     "benchmark without test-time augmentation")
                return sample["inputs"], sample["meta"]

            return ImageSource(f"the config's test set ({type(dataset).__name__}, {len(dataset)} images)",
                               load, synthetic=False)
    size = config_test_size(cfg)
    if size is None:
        raise ValueError(f"{reason}, and the config gives no test size to make synthetic images of: "
                         "give --shape H W")
    return synthetic_images(size, f"synthetic {size[0]}x{size[1]} (the config's test size; {reason})")


def inference_mode_text(model: nn.Module) -> str:
    """'whole', or 'slide (crop HxW, stride HxW[, N crops per forward])' from the model's test_cfg."""
    test_cfg = getattr(model, "test_cfg", {}) or {}
    if test_cfg.get("mode", "whole") != "slide":
        return "whole"
    (crop_h, crop_w), (stride_h, stride_w) = test_cfg["crop_size"], test_cfg["stride"]
    batch = f", {test_cfg['batch_size']} crops per forward" if test_cfg.get("batch_size") else ""
    return f"slide (crop {crop_h}x{crop_w}, stride {stride_h}x{stride_w}{batch})"


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------- inference
def _timed_runs(timed: Callable[[int], float], warmup: int, count: int, repeat: int,
                progress: ProgressCallback | None) -> tuple[list[float], list[float]]:
    """``timed(i)`` for i in 0..warmup-1, then ``repeat`` runs of i in 0..count-1; returns the warm-up
    durations and each run's mean duration."""
    total = warmup + count * repeat
    done = 0

    def call(index: int) -> float:
        nonlocal done
        seconds = timed(index)
        done += 1
        if progress is not None:
            progress(done, total)
        return seconds

    if progress is not None:
        progress(0, total)
    warm = [call(index) for index in range(warmup)]
    runs = [sum(call(index) for index in range(count)) / count for _ in range(repeat)]
    return warm, runs


@torch.no_grad()
def measure_inference(
    model: nn.Module,
    images: ImageSource,
    num_images: int = 200,
    warmup: int = 5,
    repeat: int = 1,
    cudnn_benchmark: bool = False,
    progress: ProgressCallback | None = None,
) -> InferenceResult:
    """Seconds per image of ``model`` (an eval-mode segmentor, as ``init_model`` builds it) on ``images``.

    ``warmup`` images first (reported apart), then ``repeat`` runs over images 0..num_images-1 (cycling
    through a smaller test set). Each image is loaded, normalized and moved to the device before its timer
    starts; the timer covers ``model.inference`` (whole or slide), restoring the original size and the
    argmax, with the device synchronized at both ends.
    """
    device = _model_device(model)
    shapes: set[tuple[int, int]] = set()

    def timed(index: int) -> float:
        image, meta = images.load(index)
        x = model.data_preprocessor([image.to(device)])[0]
        shapes.add(tuple(x.shape[-2:]))
        synchronize(device)
        start = time.perf_counter()
        model.predict_labels(restore_view(model, model.inference(x), meta))
        synchronize(device)
        return time.perf_counter() - start

    with cudnn_benchmark_set(cudnn_benchmark):
        reset_peak_memory(device)
        warm, runs = _timed_runs(timed, warmup, num_images, repeat, progress)
        memory = peak_memory(device)
    spread = Spread.of(runs)
    return InferenceResult(
        mode=inference_mode_text(model), precision=getattr(model, "precision", "fp32"), images=images.description,
        synthetic=images.synthetic, num_images=num_images, warmup=warmup, seconds_per_image=spread,
        images_per_second=1.0 / spread.mean, warmup_seconds=sum(warm),
        first_image_seconds=warm[0] if warm else 0.0, compile_seconds=getattr(model, "compile_seconds", None),
        memory=memory, input_shapes=sorted(shapes))


# -------------------------------------------------------------------------------------------- complexity
def measure_complexity(model: nn.Module, shape: Sequence[int], as_inference: bool = True) -> ComplexityResult:
    """Parameters and FLOPs (:func:`semseg.flops.model_complexity`, MMSegmentation's ``get_flops`` count) of
    the forward passes inference runs on an input of ``shape`` (H, W): one (whole) or one per crop (slide;
    a crop larger than the image is clipped to it). ``as_inference=False``: one forward at ``shape``."""
    from semseg.flops import model_complexity

    height, width = int(shape[0]), int(shape[1])
    test_cfg = getattr(model, "test_cfg", {}) or {}
    forward_shape, count = (height, width), 1
    if as_inference and test_cfg.get("mode", "whole") == "slide":
        crop = test_cfg["crop_size"]
        forward_shape = (min(int(crop[0]), height), min(int(crop[1]), width))
        count = len(slide_windows(height, width, crop, test_cfg["stride"]))
    counted = model_complexity(model, torch.zeros(1, 3, *forward_shape, device=_model_device(model)))
    return ComplexityResult(
        shape=(height, width), forward_shape=forward_shape, forwards_per_image=count, params=int(counted.params),
        flops_per_forward=int(counted.flops), flops_per_image=int(counted.flops) * count,
        convention=counted.mac_convention_note())


# ---------------------------------------------------------------------------------------------- training
def measure_train(
    cfg: Config,
    device: str | torch.device | None = None,
    checkpoint: str | None = None,
    batch_size: int | None = None,
    crop_size: Sequence[int] | None = None,
    amp: str | None = None,
    iters: int = 20,
    warmup: int = 5,
    repeat: int = 1,
    channels_last: bool = False,
    compile: bool = False,
    fused_optimizer: bool = False,
    cudnn_benchmark: bool = False,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Seconds per training iteration of ``cfg``'s model with its optimizer (``optim_wrapper``, built as
    the Trainer builds it; ``amp`` 'fp16' / 'bf16' turns it into an AmpOptimWrapper of that dtype).

    Each iteration is forward, loss, backward and optimizer step on one synthetic batch (``batch_size`` x 3
    x ``crop_size``, default the config's) made on the device beforehand, with the device synchronized at
    both ends. ``warmup`` iterations, then ``repeat`` runs of ``iters``. Under ``torchrun`` the model is
    wrapped in DDP; every rank times its own iterations and the result holds every rank's mean and the
    slowest rank's runs (on every rank).
    """
    rank, world_size, device = distributed.init_distributed(None if device is None else str(device))
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("float16 mixed precision (--amp fp16) needs a CUDA device; on the CPU use --amp bf16")
    crop = tuple(int(v) for v in crop_size) if crop_size is not None else config_crop_size(cfg)
    if crop is None:
        raise ValueError(f"cannot tell the training crop of {cfg.filename or 'the config'}: give --crop-size H W")
    batch = int(batch_size or (cfg.get("train_dataloader") or {}).get("batch_size") or 2)

    module = build("segmentor", cfg.model.to_dict()).to(device)
    if checkpoint is not None:
        from semseg.engine.checkpoint import load_checkpoint

        load_checkpoint(module, checkpoint)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(memory_format=memory_format)
    model: nn.Module = module
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.get("find_unused_parameters", False))
    if compile:
        model = torch.compile(model)

    from semseg.engine.optim import build_optim_wrapper

    optim_cfg = cfg.optim_wrapper.to_dict()
    if amp is not None:
        optim_cfg["type"] = "AmpOptimWrapper"
        optim_cfg["dtype"] = AMP_DTYPES[amp]
    optim_wrapper = build_optim_wrapper(module, optim_cfg, fused_optimizer=fused_optimizer)
    cast = getattr(optim_wrapper, "cast_dtype", None)
    amp_used = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(cast, "fp32")
    optim_wrapper.initialize_count_status(0, warmup + iters * repeat)

    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(batch, 3, *crop, generator=generator).to(device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, module.num_classes, (batch, *crop), generator=generator).to(device)
    model.train()

    def step(_: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        with optim_wrapper.optim_context(model):
            losses = model(x, labels)
        loss = sum(value for key, value in losses.items() if "loss" in key)
        optim_wrapper.update_params(loss)
        synchronize(device)
        return time.perf_counter() - start

    with cudnn_benchmark_set(cudnn_benchmark):
        reset_peak_memory(device)
        warm, runs = _timed_runs(step, warmup, iters, repeat, progress)
        memory = peak_memory(device)

    gathered = distributed.all_gather_object((runs, memory.peak_mib))
    rank_means = [statistics.fmean(rank_runs) for rank_runs, _ in gathered]
    slowest = max(range(len(rank_means)), key=rank_means.__getitem__)
    memory.peak_mib = max(peak for _, peak in gathered)
    return TrainResult(
        batch_size=batch, crop_size=crop, amp=amp_used, optimizer=type(optim_wrapper.optimizer).__name__,
        iters=iters, warmup=warmup, seconds_per_iter=Spread.of(gathered[slowest][0]), warmup_seconds=sum(warm),
        first_iter_seconds=warm[0] if warm else 0.0, memory=memory, world_size=len(gathered),
        rank_seconds_per_iter=rank_means, slowest_rank=slowest)


# --------------------------------------------------------------------------------------------- the command
@dataclass
class BenchmarkOptions:
    """What ``semseg benchmark`` runs: inference (default) or ``train``, plus ``flops`` (``num_images=0``
    with ``flops`` only counts). ``batch_size`` is the training batch under ``train``, and for inference the
    slide crops per forward (``test_cfg.batch_size``). ``precision`` stands for ``amp`` under ``train``.
    The speed options are ``init_model``'s (inference) and the Trainer's (training)."""

    checkpoint: str | None = None
    cfg_options: list[str] | dict | None = None
    train: bool = False
    flops: bool = False
    num_images: int = 200
    iters: int = 20
    warmup: int = 5
    repeat: int = 1
    shape: Sequence[int] | None = None
    batch_size: int | None = None
    crop_size: Sequence[int] | None = None
    precision: str = "fp32"
    amp: str | None = None
    fuse: bool = False
    onednn: bool = False
    channels_last: bool = False
    inference_mode: bool = False
    compile: bool = False
    fused_optimizer: bool = False
    cudnn_benchmark: bool = False

    def check(self, device: torch.device) -> None:
        """Reject contradictory or impossible options with one clear message (as the command line spells
        them); under ``train`` a reduced ``precision`` becomes ``amp``."""
        for name, value, least in (("--num-images", self.num_images, 0), ("--iters", self.iters, 1),
                                   ("--warmup", self.warmup, 1 if self.compile else 0),
                                   ("--repeat", self.repeat, 1)):
            if value < least:
                why = " (the first call compiles)" if name == "--warmup" else ""
                raise ValueError(f"{name} must be at least {least}{why}, got {value}")
        for name, values in (("--shape", self.shape), ("--crop-size", self.crop_size),
                             ("--batch-size", None if self.batch_size is None else [self.batch_size])):
            if values is not None and any(int(v) <= 0 for v in values):
                raise ValueError(f"{name} must be positive, got {' '.join(str(v) for v in values)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError("--precision fp16 needs a CUDA device; on the CPU use --precision bf16")
        if not self.train:
            misplaced = [name for name, given in (("--amp", self.amp), ("--crop-size", self.crop_size),
                                                  ("--fused-optimizer", self.fused_optimizer)) if given]
            if misplaced:
                raise ValueError(f"{misplaced[0]} applies to --train (inference takes --precision and --shape)")
            if self.num_images == 0 and not self.flops:
                raise ValueError("--num-images 0 measures nothing (add --flops to count FLOPs only)")
            if self.num_images and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ValueError("the inference benchmark runs on one process: run it without torchrun")
            return
        if self.fuse or self.inference_mode or self.onednn:
            name = "--fuse" if self.fuse else "--inference-mode" if self.inference_mode else "--onednn"
            raise ValueError(f"{name} is an inference option; it does not apply to --train")
        if self.precision != "fp32":
            if self.amp is not None and self.amp != self.precision:
                raise ValueError(f"--precision {self.precision} and --amp {self.amp} disagree (under --train "
                                 "they mean the same)")
            self.amp = self.precision
        if self.amp == "fp16" and device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16")


def run_benchmark(
    config: str | Config,
    device: str | None = None,
    progress: Callable[[str], ProgressCallback] | None = None,
    **options: Any,
) -> BenchmarkReport:
    """``semseg benchmark``: the measurements ``options`` (:class:`BenchmarkOptions`' fields) ask for, on
    ``device`` (default CUDA when available). ``progress(label)`` makes the callback of one measurement
    (rank 0 only). The FLOPs are counted on the model as the config builds it (as MMSegmentation counts
    them), not a fused or compiled one, at ``shape``, else the measured images' size, else the training
    crop (``train``) or the config's test size."""
    opts = BenchmarkOptions(**options)
    chosen = resolve_device(device)
    opts.check(chosen)
    cfg = load_config(config, opts.cfg_options)
    name = cfg.filename or str(config)
    if opts.train:  # join torchrun's process group now: only rank 0 shows progress
        distributed.init_distributed(str(chosen) if device is not None else None)
    if not distributed.is_main_process():
        progress = None
    report = BenchmarkReport(config=name, device=str(chosen), device_name=device_name(chosen),
                             torch_version=torch.__version__, threads=torch.get_num_threads(),
                             cudnn_benchmark=opts.cudnn_benchmark, options=asdict(opts))
    if opts.train:
        report.train = measure_train(
            cfg, chosen, checkpoint=opts.checkpoint, batch_size=opts.batch_size, crop_size=opts.crop_size,
            amp=opts.amp, iters=opts.iters, warmup=opts.warmup, repeat=opts.repeat,
            channels_last=opts.channels_last, compile=opts.compile, fused_optimizer=opts.fused_optimizer,
            cudnn_benchmark=opts.cudnn_benchmark, progress=progress("train") if progress else None)
        if chosen.type == "cuda" and distributed.world_size() > 1:
            report.device = f"cuda:{torch.cuda.current_device()}"
        if not opts.flops:
            return report
    elif opts.batch_size is not None:
        cfg.merge_from_dict({"model.test_cfg.batch_size": opts.batch_size})

    from semseg.apis import init_model

    model = None
    if not opts.train and opts.num_images:
        model = init_model(cfg, opts.checkpoint, device=chosen, precision=opts.precision, fuse=opts.fuse,
                           onednn=opts.onednn, channels_last=opts.channels_last, inference_mode=opts.inference_mode,
                           compile=opts.compile)
        report.inference = measure_inference(model, config_images(cfg, opts.shape), opts.num_images, opts.warmup,
                                             opts.repeat, opts.cudnn_benchmark,
                                             progress("inference") if progress else None)
    if opts.flops:
        tuned = opts.precision != "fp32" or opts.fuse or opts.onednn or opts.channels_last or opts.inference_mode or opts.compile
        if model is None or tuned:
            model = None  # free the measured model before building the plain one
            model = init_model(cfg, None, device=chosen)
        inference = report.inference
        if opts.shape is None and inference is not None and len(inference.input_shapes) == 1:
            shape = inference.input_shapes[0]
        else:
            shape = opts.shape or (report.train.crop_size if report.train else config_test_size(cfg))
        if shape is None:
            raise ValueError(f"{name} gives no test size to count FLOPs at: give --shape H W")
        report.complexity = measure_complexity(model, shape, as_inference=not opts.train)
        if inference is not None and inference.input_shapes == [tuple(report.complexity.shape)]:
            inference.flops_per_image = report.complexity.flops_per_image
            inference.gflops_per_second = inference.flops_per_image / inference.seconds_per_image.mean / 1e9
    return report
