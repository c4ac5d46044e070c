"""``semseg config CONFIG``: print the resolved config (MMSegmentation's ``tools/misc/print_config.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  semseg config pspnet_r50-d8_4xb2-40k_cityscapes-512x1024
  semseg config my_config.py --cfg-options model.decode_head.num_classes=3 --out resolved.py
"""


def run(args: argparse.Namespace) -> int:
    from semseg.config import load_config

    cfg = load_config(args.config, args.cfg_options)
    text = cfg.pretty_text
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"config written to {args.out}")
    else:
        print(text, end="")
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    config = commands.add_parser(
        "config", help="print a config with its _base_ files merged and overrides applied",
        description="Print the resolved config: _base_ inheritance merged, {{_base_.x}} references and\n"
                    "--cfg-options applied. The text is a Python config file (name = value lines) that loads\n"
                    "back to the same config, so it can be saved and edited.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_argument("config", help="config file or zoo name")
    config.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override config entries first, e.g. model.decode_head.num_classes=3 "
                             "train_dataloader.batch_size=4")
    config.add_argument("--out", default=None, metavar="FILE",
                        help="write the config to FILE (a .py config file) instead of printing it")
    config.set_defaults(func=run)
