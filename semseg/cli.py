"""The ``semseg`` command: train, test, predict, zoo, demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np


def _cmd_zoo(args: argparse.Namespace) -> int:
    from semseg.zoo import list_models, manifest

    names = list_models(args.pattern)
    for name in names:
        entry = manifest()[name]
        miou = entry.get("metrics", {}).get("mIoU")
        print(f"{name:70s} {entry.get('dataset', ''):22s} mIoU {miou if miou is not None else '-'}")
    print(f"{len(names)} models", file=sys.stderr)
    return 0 if names else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from semseg.apis import inference_model, init_model, show_result

    model = init_model(args.config, args.checkpoint, device=args.device, cfg_options=args.cfg_options)
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


def _cmd_train(args: argparse.Namespace) -> int:
    from semseg.config import load_config
    from semseg.engine import distributed
    from semseg.engine.trainer import Trainer

    cfg = load_config(args.config, args.cfg_options)
    work_dir = args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(str(args.config)).stem)
    resume = args.resume_from or args.resume
    try:
        Trainer(cfg, work_dir, resume=resume, amp=args.amp, device=args.device).train()
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    distributed.cleanup()
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    from semseg.engine import distributed
    from semseg.engine.testing import run_test

    try:
        run_test(args.config, args.checkpoint, cfg_options=args.cfg_options, tta=args.tta,
                 show_dir=args.show_dir, out_dir=args.out, device=args.device, work_dir=args.work_dir)
    except BaseException:
        distributed.cleanup(wait=False)
        raise
    distributed.cleanup()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from semseg.demo import run_demo

    run_demo(Path(args.work_dir), max_iters=args.max_iters)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semseg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    zoo = commands.add_parser("zoo", help="list zoo models (shell-style PATTERN)")
    zoo.add_argument("pattern", nargs="?", default="*")
    zoo.set_defaults(func=_cmd_zoo)

    predict = commands.add_parser("predict", help="segment images with a config (or zoo name) and checkpoint")
    predict.add_argument("config")
    predict.add_argument("checkpoint")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--out", default="predictions")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    predict.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    predict.set_defaults(func=_cmd_predict)

    train = commands.add_parser("train", help="train the model a config (or zoo name) describes")
    train.add_argument("config")
    train.add_argument("--work-dir", default=None, help="default: work_dirs/<config name>")
    train.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    train.add_argument("--resume-from", default=None, help="resume from this checkpoint")
    train.add_argument("--amp", action="store_true", help="mixed precision (float16 on GPUs, bfloat16 on CPUs)")
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    train.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    train.set_defaults(func=_cmd_train)

    test = commands.add_parser("test", help="evaluate a checkpoint on the config's test set (mIoU, mAcc, aAcc)")
    test.add_argument("config")
    test.add_argument("checkpoint")
    test.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    test.add_argument("--show-dir", default=None, help="write colored overlays here")
    test.add_argument("--out", default=None, help="write label PNGs here (Cityscapes: labelIds for the server)")
    test.add_argument("--work-dir", default=None, help="write the metrics log here")
    test.add_argument("--device", default=None)
    test.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE")
    test.set_defaults(func=_cmd_test)

    demo = commands.add_parser("demo", help="train, evaluate and use a small model on the built-in synthetic data")
    demo.add_argument("--work-dir", default="work_dirs/demo")
    demo.add_argument("--max-iters", type=int, default=None, help="shorter run (default: the config's 600)")
    demo.set_defaults(func=_cmd_demo)
    return parser


# Errors that mean "the input is wrong" (config, option, file, data): reported in one line, no traceback.
USER_ERRORS = (KeyError, FileNotFoundError, ValueError, TypeError, NotImplementedError, FloatingPointError,
               RuntimeError, OSError)


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


if __name__ == "__main__":
    sys.exit(main())
