"""``semseg zoo [PATTERN]``: list the zoo's models."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from semseg.zoo import list_models, manifest

    names = list_models(args.pattern)
    for name in names:
        entry = manifest()[name]
        metrics = entry.get("metrics", {})
        metric = next((key for key in ("mIoU", "mDice", "mFscore") if metrics.get(key) is not None), "mIoU")
        print(f"{name:70s} {entry.get('dataset', ''):22s} {metric} {metrics.get(metric, '-')}")
    print(f"{len(names)} models", file=sys.stderr)
    return 0 if names else 1


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    zoo = commands.add_parser("zoo", help="list zoo models (shell-style PATTERN)")
    zoo.add_argument("pattern", nargs="?", default="*")
    zoo.set_defaults(func=run)
