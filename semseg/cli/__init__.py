"""The ``semseg`` command: train, test, predict, benchmark, export, zoo, download, config, browse-dataset, plot-log,
env, demo (one module per subcommand)."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

from semseg.threads import prefer_passive_wait

prefer_passive_wait()  # before the commands import torch: OpenMP reads OMP_WAIT_POLICY once, when torch loads it

from semseg import __version__  # noqa: E402
from semseg.cli import (  # noqa: E402
    benchmark,
    browse_dataset,
    config,
    demo,
    download,
    env,
    export,
    plot_log,
    predict,
    test,
    train,
    zoo,
)
from semseg.cli.benchmark import benchmark_lines  # noqa: E402
from semseg.cli.progress import ConsoleProgress  # noqa: E402

__all__ = ["ConsoleProgress", "benchmark_lines", "build_parser", "main"]

COMMANDS = (zoo, download, predict, train, test, benchmark, export, config, browse_dataset, plot_log, env, demo)


DESCRIPTION = """\
Semantic segmentation in plain PyTorch, with MMSegmentation 1.x's configs, checkpoints and metrics.
Wherever a command takes CONFIG, a config file or a zoo name works (semseg zoo lists the names)."""

EXAMPLES = """\
examples:
  semseg demo                                  # train and use a small model on generated data (CPU, minutes)
  semseg predict pspnet_r50-d8_4xb2-40k_cityscapes-512x1024 zoo street.jpg --out preds
  semseg zoo deeplabv3plus                     # published models: dataset, crop, schedule, mIoU

semseg COMMAND --help shows a command's options and examples. python -m semseg is the same command;
SEMSEG_DEBUG=1 shows the traceback behind an error message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semseg", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"semseg {__version__} (torch {metadata.version('torch')})")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


# Errors that mean "the input is wrong" (config, option, file, data): reported in one line, no traceback.
USER_ERRORS = (KeyError, FileNotFoundError, ValueError, TypeError, NotImplementedError, FloatingPointError,
               RuntimeError, OSError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run a ``semseg`` command; returns the exit status (1 with a one-line message for a user error;
    ``SEMSEG_DEBUG=1`` shows the traceback instead)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        if os.environ.get("SEMSEG_DEBUG"):
            raise
        from semseg.engine.distributed import describe_failure

        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"semseg: error: {describe_failure(error, message)}", file=sys.stderr)
        return 1
