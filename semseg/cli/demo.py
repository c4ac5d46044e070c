"""``semseg demo``: train, evaluate and use a small model on the built-in synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  semseg demo                                  # about 600 iterations: a few minutes on a CPU
  semseg demo --work-dir /tmp/demo --max-iters 50   # a quick look (the model is still poor)

It trains fcn_r18-d8_1xb8-600_synthetic-96x96 (a slim FCN on generated textured shapes, 5 classes; no
download), prints the validation mIoU, mAcc and aAcc, then reloads the best checkpoint and segments held-out
images with whole and sliding-window inference. The work dir receives the logs and checkpoints, and
predictions/ the images, their colored predictions (whole, slide) and the ground truth."""


def run(args: argparse.Namespace) -> int:
    from semseg.demo import run_demo

    run_demo(Path(args.work_dir), max_iters=args.max_iters)
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    demo = commands.add_parser(
        "demo", help="train, evaluate and use a small model on the built-in synthetic data",
        description="Train, evaluate and use a small model on the built-in synthetic data.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--work-dir", default="work_dirs/demo", metavar="DIR",
                      help="where logs, checkpoints and predictions go (default: work_dirs/demo)")
    demo.add_argument("--max-iters", type=int, default=None, metavar="N",
                      help="train N iterations, validating once at the end (default: the config's 600, "
                           "validating every 200)")
    demo.set_defaults(func=run)
