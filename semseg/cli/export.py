"""``semseg export CONFIG CHECKPOINT --format onnx --out FILE``: ONNX, TorchScript or torch.export files."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

EPILOG = """examples:
  semseg export pspnet_r50-d8_4xb2-40k_cityscapes-512x1024 zoo --out pspnet.onnx
  semseg export my_config.py work_dir/iter_40000.pth --format pt2 --shape 512 512 --out model.pt2
  semseg export my_config.py ckpt.pth --with-preprocess --input-order rgb --out model.onnx

The ONNX graph takes a normalized float32 (N, 3, H, W) input and returns logits (N, C, H, W) at the input
size; --with-preprocess makes it take uint8 (N, H, W, 3) images and return labels and logits. After writing,
the file is run with onnxruntime (or reloaded, for TorchScript and .pt2) and compared with PyTorch; the max
abs difference is printed. A slide-mode config exports the crop model: run it with
semseg.export.OnnxSegmentor, which loops over the crop windows (see docs/export.md)."""

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}


class StepDisplay:
    """The step an export is at and the time so far, on stderr: one line redrawn in place on a terminal, a
    line per step elsewhere. An export is a few long steps of unknown length (tracing, onnxruntime checks),
    so it shows which one runs rather than a bar whose ETA would be a guess."""

    def __init__(self, label: str = "export", stream: TextIO | None = None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.steps = 0

    def __call__(self, step: str) -> None:
        self.steps += 1
        text = f"{self.label} [{time.perf_counter() - self.start:.1f} s] step {self.steps}: {step}"
        if self.tty:
            self.stream.write(f"\r\033[K{text}")
            self.stream.flush()
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """End the display: the total time (on a terminal, below the last step)."""
        done = f"{self.label}: {self.steps} steps in {time.perf_counter() - self.start:.1f} s"
        print(f"\r\033[K{done}" if self.tty else done, file=self.stream, flush=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from semseg.apis import init_model
    from semseg.export import describe, export_onnx, export_program, export_torchscript

    model = init_model(args.config, args.checkpoint, device=args.device, cfg_options=args.cfg_options)
    out = Path(args.out or Path(str(args.config)).stem + SUFFIXES[args.format])
    display = StepDisplay()
    common = dict(shape=args.shape, batch=args.batch, with_preprocess=args.with_preprocess,
                  input_order=args.input_order, slide_in_graph=args.slide_in_graph, progress=display)
    try:
        if args.format == "onnx":
            result = export_onnx(model, out, opset=args.opset, dynamic=not args.static, dynamo=args.dynamo,
                                 **common)
        elif args.format == "torchscript":
            result = export_torchscript(model, out, **common)
        else:
            result = export_program(model, out, dynamic=not args.static, **common)
    finally:
        display.close()
    for line in describe(result):
        print(line)
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    parser = commands.add_parser(
        "export", help="export a model to ONNX, TorchScript or torch.export (.pt2), checked against PyTorch",
        description="Export a model to ONNX, TorchScript or a torch.export program (.pt2), then check the file "
                    "against PyTorch.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file or zoo name")
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="weights: a path, a URL, or 'zoo' for the zoo's published ones (default: random)")
    parser.add_argument("--format", choices=sorted(SUFFIXES), default="onnx",
                        help="onnx (default), torchscript (torch.jit.trace, .pt) or pt2 (torch.export)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="output file (default: the config's name with .onnx / .pt / .pt2)")
    parser.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="traced input size (default: the slide crop, else the config's crop_size)")
    parser.add_argument("--batch", type=int, default=1, help="traced batch size (default 1)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, at least 17 (default 17)")
    parser.add_argument("--static", action="store_true",
                        help="fixed input shape (default: batch, height and width dynamic where the model allows)")
    parser.add_argument("--with-preprocess", action="store_true",
                        help="the graph takes uint8 (N, H, W, 3) images, normalizes them itself and also "
                             "returns labels (N, H, W)")
    parser.add_argument("--input-order", choices=["bgr", "rgb"], default="bgr",
                        help="--with-preprocess: channel order of the input images (default bgr, as cv2 reads)")
    parser.add_argument("--slide-in-graph", action="store_true",
                        help="slide-mode configs: tile inside the graph for one fixed --shape instead of "
                             "exporting the crop model")
    parser.add_argument("--dynamo", action="store_true",
                        help="onnx: use torch's dynamo-based exporter (slower) instead of the TorchScript-based one")
    parser.add_argument("--device", default="cpu", help="device to trace on (default cpu)")
    parser.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override config entries, e.g. model.test_cfg.mode=whole")
    parser.set_defaults(func=run)
