"""``semseg predict CONFIG CHECKPOINT IMAGES...``: label maps and overlays."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from semseg.cli.common import add_inference_speed_options


def run(args: argparse.Namespace) -> int:
    from semseg.apis import inference_model, init_model, show_result

    model = init_model(args.config, args.checkpoint, device=args.device, cfg_options=args.cfg_options,
                       precision=args.precision, fuse=args.fuse)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = (getattr(model, "dataset_meta", None) or {}).get("palette")
    palette = None if palette is None else np.asarray(palette, dtype=np.uint8)[:, ::-1]  # RGB -> BGR
    for image in args.images:
        result = inference_model(model, image, tta=args.tta)
        stem = Path(image).stem
        labels_path = out_dir / f"{stem}_labels.png"
        if not cv2.imwrite(str(labels_path), result.labels.astype(np.uint8)):
            raise OSError(f"could not write {labels_path}")
        show_result(image, result.labels, palette=palette, out_file=out_dir / f"{stem}_overlay.png")
        print(f"{image}: {result.labels.shape[1]}x{result.labels.shape[0]} -> {out_dir}/{stem}_*.png")
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    predict = commands.add_parser("predict", help="segment images with a config (or zoo name) and checkpoint")
    predict.add_argument("config")
    predict.add_argument("checkpoint")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--out", default="predictions")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    add_inference_speed_options(predict)
    predict.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    predict.set_defaults(func=run)
