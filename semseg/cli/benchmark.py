"""``semseg benchmark CONFIG``: inference and training speed, parameters and FLOPs."""

from __future__ import annotations

import argparse
from pathlib import Path

from semseg.cli.common import add_threads_option, apply_threads
from semseg.cli.progress import ConsoleProgress

EXAMPLES = """\
examples:
  semseg benchmark pspnet_r50-d8_4xb2-40k_cityscapes-512x1024 --num-images 20 --flops
  semseg benchmark my_config.py --checkpoint ckpt.pth --precision bf16 --fuse --repeat 3 --json speed.json
  semseg benchmark my_config.py --train --iters 50 --amp bf16 --batch-size 4 --crop-size 256 256

Figures go to stdout, one a line; progress goes to stderr (--quiet: none). Under torchrun, --train
times DDP steps on every process and reports each rank's s/iter and the slowest."""


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
    options = [name for name in ("fuse", "onednn", "channels_last", "inference_mode", "compile", "fused_optimizer")
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


def run(args: argparse.Namespace) -> int:
    threads = apply_threads(args, announce=False)  # printed with the report
    import json

    from semseg.benchmark import run_benchmark
    from semseg.engine import distributed

    with distributed.process_group_scope():
        report = run_benchmark(
            args.config, device=args.device, progress=None if args.quiet else ConsoleProgress,
            checkpoint=args.checkpoint, cfg_options=args.cfg_options, train=args.train, flops=args.flops,
            num_images=args.num_images, iters=args.iters, warmup=args.warmup, repeat=args.repeat, shape=args.shape,
            batch_size=args.batch_size, crop_size=args.crop_size, precision=args.precision, amp=args.amp,
            fuse=args.fuse, onednn=args.onednn, channels_last=args.channels_last, inference_mode=args.inference_mode,
            compile=args.compile, fused_optimizer=args.fused_optimizer, cudnn_benchmark=args.cudnn_benchmark)
        if distributed.is_main_process():
            for line in [*benchmark_lines(report), threads]:
                print(line)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    bench = commands.add_parser(
        "benchmark", help="inference speed (default), training speed (--train), parameters and FLOPs (--flops)",
        description="Inference: forward + post-processing (resize to the original size, argmax) per image, data\n"
        "loading excluded, on the config's test set when it is on disk, else on synthetic images. Training:\n"
        "s/iter on synthetic batches with the config's optimizer. Peak memory: CUDA max_memory_allocated, or\n"
        "the process's peak resident set on CPUs.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("config", help="config file or zoo name")
    bench.add_argument("--checkpoint", default=None, metavar="FILE", help="weights to load (the timing does not depend on them)")
    bench.add_argument("--train", action="store_true", help="measure training s/iter instead of inference")
    bench.add_argument("--flops", action="store_true",
                       help="count parameters and FLOPs (with inference: achieved GFLOP/s; "
                            "--num-images 0 counts only)")
    bench.add_argument("--num-images", type=int, default=200, metavar="N", help="timed images per run (default 200)")
    bench.add_argument("--iters", type=int, default=20, metavar="N", help="--train: timed iterations per run (default 20)")
    bench.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed images / iterations first (default 5)")
    bench.add_argument("--repeat", type=int, default=1, metavar="N", help="runs; mean and spread are reported (default 1)")
    bench.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="synthetic images of this size (and the FLOPs shape)")
    bench.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="--train: batch size (default the config's); inference: slide crops per forward")
    bench.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="--train: crop size (default the config's)")
    bench.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                       help="inference precision (fp16 on GPUs only); under --train the same as --amp")
    bench.add_argument("--amp", choices=["fp16", "bf16"], default=None, help="--train: mixed precision dtype")
    bench.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions (inference)")
    bench.add_argument("--onednn", action="store_true",
                       help="CPU fp32 inference: prepacked oneDNN convolutions, ResNet backbone in the blocked layout")
    bench.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    bench.add_argument("--inference-mode", action="store_true", help="inference under torch.inference_mode")
    bench.add_argument("--compile", action="store_true", help="torch.compile (compile time shows in warm-up)")
    bench.add_argument("--fused-optimizer", action="store_true", help="--train: fused / foreach optimizer step")
    bench.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark on")
    bench.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    bench.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress display")
    bench.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                       help="override config entries, e.g. model.test_cfg.mode=whole")
    add_threads_option(bench)
    bench.set_defaults(func=run)
