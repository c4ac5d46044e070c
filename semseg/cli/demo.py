"""``semseg demo``: train, evaluate and use a small model on the built-in synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from semseg.demo import run_demo

    run_demo(Path(args.work_dir), max_iters=args.max_iters)
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    demo = commands.add_parser("demo", help="train, evaluate and use a small model on the built-in synthetic data")
    demo.add_argument("--work-dir", default="work_dirs/demo")
    demo.add_argument("--max-iters", type=int, default=None, help="shorter run (default: the config's 600)")
    demo.set_defaults(func=run)
