"""The ``semseg`` command: train, test, predict, benchmark, zoo, demo."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from semseg import __version__


def _cmd_zoo(args: argparse.Namespace) -> int:
    from semseg.zoo import list_models, manifest

    names = list_models(args.pattern)
    for name in names:
        entry = manifest()[name]
        miou = entry.get("metrics", {}).get("mIoU")
        print(f"{name:70s} {entry.get('dataset', ''):22s} mIoU {miou if miou is not None else '-'}")
    print(f"{len(names)} models", file=sys.stderr)
    return 0 if names else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from semseg.apis import inference_model, init_model, show_result

    model = init_model(args.config, args.checkpoint, device=args.device, cfg_options=args.cfg_options,
                       precision=args.precision, fuse=args.fuse)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = (getattr(model, "dataset_meta", None) or {}).get("palette")
    palette = None if palette is None else np.asarray(palette, dtype=np.uint8)[:, ::-1]  # RGB -> BGR
    for image in args.images:
        result = inference_model(model, image, tta=args.tta)
        stem = Path(image).stem
        labels_path = out_dir / f"{stem}_labels.png"
        if not cv2.imwrite(str(labels_path), result.labels.astype(np.uint8)):
            raise OSError(f"could not write {labels_path}")
        show_result(image, result.labels, palette=palette, out_file=out_dir / f"{stem}_overlay.png")
        print(f"{image}: {result.labels.shape[1]}x{result.labels.shape[0]} -> {out_dir}/{stem}_*.png")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from semseg.config import load_config
    from semseg.engine import distributed
    from semseg.engine.trainer import Trainer

    cfg = load_config(args.config, args.cfg_options)
    work_dir = args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(str(args.config)).stem)
    resume = args.resume_from or args.resume
    try:
        compile_option = dict(mode=args.compile_mode) if args.compile_mode else args.compile
        Trainer(cfg, work_dir, resume=resume, amp=args.amp, device=args.device, channels_last=args.channels_last,
                fused_optimizer=args.fused_optimizer, check_finite_every=args.check_finite_every,
                compile=compile_option).train()
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    distributed.cleanup()
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    from semseg.engine import distributed
    from semseg.engine.testing import run_test

    try:
        run_test(args.config, args.checkpoint, cfg_options=args.cfg_options, tta=args.tta,
                 show_dir=args.show_dir, out_dir=args.out, device=args.device, work_dir=args.work_dir,
                 precision=args.precision, fuse=args.fuse)
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    distributed.cleanup()
    return 0


class ConsoleProgress:
    """A progress bar redrawn in place on a terminal; elsewhere a plain line at every tenth. Timing and
    ETA come from the trainer's :class:`semseg.engine.logging.Progress`."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.timing = None
        self.shown = 0  # tenths shown

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps finished (0 starts the clock)."""
        from semseg.engine.logging import Progress

        if self.timing is None or done == 0:
            self.timing = Progress(0, total)
            if done == 0:
                return
        self.timing.mark_iter()
        rate = f"{self.timing.time_per_iter:.3g} s/it, eta {self.timing.eta}"
        if self.tty:
            filled = self.width * done // max(total, 1)
            end = "\n" if done >= total else ""
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {rate}{end}")
            self.stream.flush()
        elif 10 * done // max(total, 1) > self.shown or done >= total:
            self.shown = 10 * done // max(total, 1)
            print(f"{self.label}: {done}/{total} {rate}", file=self.stream, flush=True)


def _count(value: float, unit: str = "") -> str:
    """1234567 -> '1.235 M' (with ``unit`` after the prefix)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _spread(spread, unit: str) -> str:
    if len(spread.values) == 1:
        return "1 run"
    return (f"mean of {len(spread.values)} runs; min {spread.min:.4g}, max {spread.max:.4g}, "
            f"std {spread.std:.2g} {unit}")


def benchmark_lines(report) -> list[str]:
    """A :class:`semseg.benchmark.BenchmarkReport` as text, one figure a line."""
    options = [name for name in ("fuse", "channels_last", "inference_mode", "compile", "fused_optimizer")
               if report.options.get(name)]
    lines = [f"config: {report.config}",
             f"device: {report.device} ({report.device_name}), torch {report.torch_version}, "
             f"{report.threads} thread(s), cudnn.benchmark {'on' if report.cudnn_benchmark else 'off'}"
             + (f"; options: {', '.join(options)}" if options else "")]
    if (inference := report.inference) is not None:
        spread = inference.seconds_per_image
        compiled = f"; compilation {inference.compile_seconds:.4g} s" if inference.compile_seconds else ""
        lines += [
            f"inference: {inference.mode}, {inference.precision}",
            f"images: {inference.images}; {inference.num_images} timed per run after {inference.warmup} warm-up",
            f"warm-up: {inference.warmup_seconds:.4g} s "
            f"(first image {inference.first_image_seconds:.4g} s{compiled})",
            f"time: {spread.mean:.4g} s/image, {inference.images_per_second:.4g} images/s "
            f"({_spread(spread, 's/image')})",
            f"peak memory: {inference.memory.peak_mib:.0f} MiB ({inference.memory.note})",
        ]
    if (train := report.train) is not None:
        spread = train.seconds_per_iter
        lines += [
            f"train: batch {train.batch_size}, crop {train.crop_size[0]}x{train.crop_size[1]}, {train.amp}, "
            f"{train.optimizer}, {train.world_size} process(es)",
            f"warm-up: {train.warmup} iterations, {train.warmup_seconds:.4g} s "
            f"(first {train.first_iter_seconds:.4g} s)",
            f"time: {spread.mean:.4g} s/iter over {train.iters} iterations ({_spread(spread, 's/iter')})",
        ]
        if train.world_size > 1:
            ranks = ", ".join(f"rank {i}: {s:.4g}" for i, s in enumerate(train.rank_seconds_per_iter))
            lines.append(f"ranks (s/iter): {ranks}; slowest: rank {train.slowest_rank}")
        largest = ", the largest over ranks" if train.world_size > 1 else ""
        lines.append(f"peak memory: {train.memory.peak_mib:.0f} MiB ({train.memory.note}{largest})")
    if (counted := report.complexity) is not None:
        image = f"{counted.shape[0]}x{counted.shape[1]}"
        flops = f"{_count(counted.flops_per_forward, 'FLOPs')} per {image} image"
        if counted.forwards_per_image > 1 or counted.forward_shape != counted.shape:
            crop = f"{counted.forward_shape[0]}x{counted.forward_shape[1]}"
            flops = (f"{_count(counted.flops_per_forward, 'FLOPs')} per {crop} crop, {counted.forwards_per_image} "
                     f"crops per {image} image: {_count(counted.flops_per_image, 'FLOPs')} per image")
        lines += [f"params: {_count(counted.params)}", f"flops: {flops}", f"flop convention: {counted.convention}"]
        if inference is not None and inference.gflops_per_second is not None:
            lines.append(f"achieved: {inference.gflops_per_second:.4g} GFLOP/s over forward and post-processing "
                         f"({2 * inference.gflops_per_second:.4g} counting a multiply-add as two FLOPs)")
        elif inference is not None:
            lines.append("achieved: n/a (the images differ in size from the counted shape)")
    return lines


def _cmd_benchmark(args: argparse.Namespace) -> int:
    import json

    from semseg.benchmark import run_benchmark
    from semseg.engine import distributed

    try:
        report = run_benchmark(
            args.config, device=args.device, progress=None if args.quiet else ConsoleProgress,
            checkpoint=args.checkpoint, cfg_options=args.cfg_options, train=args.train, flops=args.flops,
            num_images=args.num_images, iters=args.iters, warmup=args.warmup, repeat=args.repeat, shape=args.shape,
            batch_size=args.batch_size, crop_size=args.crop_size, precision=args.precision, amp=args.amp,
            fuse=args.fuse, channels_last=args.channels_last, inference_mode=args.inference_mode,
            compile=args.compile, fused_optimizer=args.fused_optimizer, cudnn_benchmark=args.cudnn_benchmark)
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    if distributed.is_main_process():
        for line in benchmark_lines(report):
            print(line)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    distributed.cleanup()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from semseg.demo import run_demo

    run_demo(Path(args.work_dir), max_iters=args.max_iters)
    return 0


def add_inference_speed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="run the network in this precision (fp16 on GPUs only); resize and argmax stay fp32")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions (inference only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"semseg {__version__} (torch {metadata.version('torch')})")
    commands = parser.add_subparsers(dest="command", required=True)

    zoo = commands.add_parser("zoo", help="list zoo models (shell-style PATTERN)")
    zoo.add_argument("pattern", nargs="?", default="*")
    zoo.set_defaults(func=_cmd_zoo)

    predict = commands.add_parser("predict", help="segment images with a config (or zoo name) and checkpoint")
    predict.add_argument("config")
    predict.add_argument("checkpoint")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--out", default="predictions")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    add_inference_speed_options(predict)
    predict.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    predict.set_defaults(func=_cmd_predict)

    train = commands.add_parser("train", help="train the model a config (or zoo name) describes")
    train.add_argument("config")
    train.add_argument("--work-dir", default=None, help="default: work_dirs/<config name>")
    train.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    train.add_argument("--resume-from", default=None, help="resume from this checkpoint")
    train.add_argument("--amp", action="store_true", help="mixed precision (float16 on GPUs, bfloat16 on CPUs)")
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    train.add_argument("--channels-last", action="store_true", help="weights and batches in channels-last format")
    train.add_argument("--fused-optimizer", action="store_true",
                       help="fused optimizer step on CUDA, foreach elsewhere (unless the config's optimizer sets it)")
    train.add_argument("--check-finite-every", type=int, default=1, metavar="N",
                       help="check the loss for NaN/inf every N iterations (and before each log, validation and "
                            "checkpoint) instead of every iteration: no per-iteration host sync on GPUs")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (the first iteration, "
                                                              "which compiles, is logged apart)")
    train.add_argument("--compile-mode", default=None, help="torch.compile mode (implies --compile), "
                                                             "e.g. max-autotune")
    train.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    train.set_defaults(func=_cmd_train)

    test = commands.add_parser("test", help="evaluate a checkpoint on the config's test set (mIoU, mAcc, aAcc)")
    test.add_argument("config")
    test.add_argument("checkpoint")
    test.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    test.add_argument("--show-dir", default=None, help="write colored overlays here")
    test.add_argument("--out", default=None, help="write label PNGs here (Cityscapes: labelIds for the server)")
    test.add_argument("--work-dir", default=None, help="write the metrics log here")
    test.add_argument("--device", default=None)
    add_inference_speed_options(test)
    test.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    test.set_defaults(func=_cmd_test)

    bench = commands.add_parser(
        "benchmark", help="inference speed (default), training speed (--train), parameters and FLOPs (--flops)",
        description="Inference: forward + post-processing (resize to the original size, argmax) per image, data "
        "loading excluded, on the config's test set when it is on disk, else on synthetic images. Training: "
        "s/iter on synthetic batches with the config's optimizer. Peak memory: CUDA max_memory_allocated, or "
        "the process's peak resident set on CPUs.")
    bench.add_argument("config")
    bench.add_argument("--checkpoint", default=None, help="weights to load (the timing does not depend on them)")
    bench.add_argument("--train", action="store_true", help="measure training s/iter instead of inference")
    bench.add_argument("--flops", action="store_true",
                       help="count parameters and FLOPs (with inference: achieved GFLOP/s; "
                            "--num-images 0 counts only)")
    bench.add_argument("--num-images", type=int, default=200, help="timed images per run (default 200)")
    bench.add_argument("--iters", type=int, default=20, help="--train: timed iterations per run (default 20)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed images / iterations first (default 5)")
    bench.add_argument("--repeat", type=int, default=1, help="runs; mean and spread are reported (default 1)")
    bench.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="synthetic images of this size (and the FLOPs shape)")
    bench.add_argument("--batch-size", type=int, default=None,
                       help="--train: batch size (default the config's); inference: slide crops per forward")
    bench.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="--train: crop size (default the config's)")
    bench.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                       help="inference precision (fp16 on GPUs only); under --train the same as --amp")
    bench.add_argument("--amp", choices=["fp16", "bf16"], default=None, help="--train: mixed precision dtype")
    bench.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions (inference)")
    bench.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    bench.add_argument("--inference-mode", action="store_true", help="inference under torch.inference_mode")
    bench.add_argument("--compile", action="store_true", help="torch.compile (compile time shows in warm-up)")
    bench.add_argument("--fused-optimizer", action="store_true", help="--train: fused / foreach optimizer step")
    bench.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark on")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress display")
    bench.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    bench.set_defaults(func=_cmd_benchmark)

    demo = commands.add_parser("demo", help="train, evaluate and use a small model on the built-in synthetic data")
    demo.add_argument("--work-dir", default="work_dirs/demo")
    demo.add_argument("--max-iters", type=int, default=None, help="shorter run (default: the config's 600)")
    demo.set_defaults(func=_cmd_demo)
    return parser


# Errors that mean "the input is wrong" (config, option, file, data): reported in one line, no traceback.
USER_ERRORS = (KeyError, FileNotFoundError, ValueError, TypeError, NotImplementedError, FloatingPointError,
               RuntimeError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Run a ``semseg`` command; returns the exit status (1 with a one-line message for a user error;
    ``SEMSEG_DEBUG=1`` shows the traceback instead)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        if os.environ.get("SEMSEG_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"semseg: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
