"""``semseg plot-log WORKDIR``: training curves (loss, learning rate, mIoU) from a run's JSON-lines log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  semseg plot-log work_dirs/fcn_r18-d8_1xb8-600_synthetic-96x96
  semseg plot-log work_dirs/run_a work_dirs/run_b --keys decode.loss_ce mIoU mAcc --out compare.png
"""

DEFAULT_KEYS = ("loss", "lr", "mIoU")


def run(args: argparse.Namespace) -> int:
    from semseg.plots import available_keys, check_matplotlib, plot_run_curves, read_run_log

    check_matplotlib("plot-log")
    runs = {}
    for work_dir in args.work_dirs:
        name = Path(work_dir).resolve().name
        while name in runs:  # two runs of the same folder name: keep both lines
            name += "'"
        runs[name] = read_run_log(work_dir)
    keys = args.keys
    if keys is None:  # the default keys a run has (a run without validation has no mIoU)
        found = {key for records in runs.values() for key in available_keys(records)}
        keys = [key for key in DEFAULT_KEYS if key in found]
        skipped = [key for key in DEFAULT_KEYS if key not in found]
        if skipped:
            print(f"not in the log, not plotted: {', '.join(skipped)}", file=sys.stderr)
        if not keys:
            raise KeyError(f"none of {', '.join(DEFAULT_KEYS)} in the log(s); logged keys: "
                           f"{', '.join(sorted(found)) or 'none'} (choose with --keys)")
    first = Path(args.work_dirs[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "curves.png"
    plot_run_curves(runs, keys, out)
    print(f"{', '.join(keys)} plotted to {out}")
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    plot = commands.add_parser(
        "plot-log", help="plot loss, learning rate and mIoU curves of training runs to a PNG",
        description="Plot values of a run's JSON-lines log (<timestamp>.jsonl, written by semseg train;\n"
                    "MMSegmentation's <timestamp>/vis_data/scalars.json works too) against the iteration, one\n"
                    "panel per key, to a PNG. A resumed run's logs are joined. 'loss' is the logged total, or\n"
                    "the sum of the logged *loss* terms. Needs matplotlib: pip install 'semseg[vis]'.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    plot.add_argument("work_dirs", nargs="+", metavar="WORKDIR",
                      help="a training work dir (or a log file); several draw one line each")
    plot.add_argument("--keys", nargs="+", default=None, metavar="KEY",
                      help="logged values to plot, e.g. loss lr mIoU decode.loss_ce aAcc mAcc "
                           f"(default: those of {' '.join(DEFAULT_KEYS)} that the log has)")
    plot.add_argument("--out", default=None, metavar="FILE",
                      help="the image to write (.png; default: WORKDIR/curves.png)")
    plot.set_defaults(func=run)
