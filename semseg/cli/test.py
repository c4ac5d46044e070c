"""``semseg test CONFIG CHECKPOINT``: evaluate on the config's test set."""

from __future__ import annotations

import argparse

from semseg.cli.common import add_inference_speed_options


def run(args: argparse.Namespace) -> int:
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


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
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
    test.set_defaults(func=run)
