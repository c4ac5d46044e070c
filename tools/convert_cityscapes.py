"""Write Cityscapes ``*_gtFine_labelTrainIds.png`` label maps and ``<split>.txt`` stem lists.

    python tools/convert_cityscapes.py data/cityscapes [--gt-dir gtFine] [--source auto] [--overwrite]

``--source labelIds`` maps the official ``*_labelIds.png`` (exactly the official train ids),
``polygons`` rasterizes ``*_polygons.json`` as cityscapesScripts does (Pillow), ``auto`` (default) takes the PNG where there is one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from semseg.data.datasets.cityscapes import convert_cityscapes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write Cityscapes *_labelTrainIds.png maps and split lists")
    parser.add_argument("data_root", help="the folder holding leftImg8bit/ and gtFine/")
    parser.add_argument("--gt-dir", default="gtFine")
    parser.add_argument("--source", default="auto", choices=("auto", "labelIds", "polygons"))
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps that exist")
    args = parser.parse_args(argv)
    written = convert_cityscapes(args.data_root, args.gt_dir, args.source, overwrite=args.overwrite)
    print(f"wrote {len(written)} label maps under {Path(args.data_root) / args.gt_dir}")


if __name__ == "__main__":
    main()
