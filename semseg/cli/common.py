"""Options several commands share."""

from __future__ import annotations

import argparse
import os
import sys


def add_inference_speed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="run the network in this precision (fp16 on GPUs only); resize and argmax stay fp32")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions (inference only)")
    parser.add_argument("--onednn", action="store_true",
                        help="CPU fp32: prepacked oneDNN convolutions, ResNet backbones in oneDNN's blocked layout "
                             "(logits within 1e-5)")


def _thread_count(value: str) -> int:
    count = int(value) if value.strip().isdigit() else 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, got {value!r}")
    return count


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_thread_count, default=None, metavar="N",
                        help="intra-op CPU threads of each process (default: the cores this process may use, "
                             "shared among torchrun's local processes; OMP_NUM_THREADS also sets it)")


def apply_threads(args: argparse.Namespace, announce: bool = True) -> str:
    """Choose and set this process's threads (``semseg.threads``) from ``args.threads``, before the
    command's work; returns the choice as a line and, with ``announce``, prints it on stderr (rank 0 of a
    ``semseg`` process only: a program calling ``main`` keeps its own stderr; ``semseg.threads.chosen()``
    has the line for a log)."""
    from semseg.threads import configure_threads, own_process

    line = configure_threads(args.threads)
    if announce and own_process() and os.environ.get("RANK", "0") == "0":
        print(f"semseg {args.command}: {line}", file=sys.stderr, flush=True)
    return line
