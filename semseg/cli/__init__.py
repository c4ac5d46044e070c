"""The ``semseg`` command: train, test, predict, benchmark, export, zoo, download, config, browse-dataset, plot-log,
env, demo (one module per subcommand)."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

from semseg import __version__
from semseg.cli import (
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
from semseg.cli.benchmark import benchmark_lines
from semseg.cli.progress import ConsoleProgress

__all__ = ["ConsoleProgress", "benchmark_lines", "build_parser", "main"]

COMMANDS = (zoo, download, predict, train, test, benchmark, export, config, browse_dataset, plot_log, env, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semseg", description=__doc__)
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
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"semseg: error: {message}", file=sys.stderr)
        return 1
