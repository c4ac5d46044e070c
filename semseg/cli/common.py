"""Options several commands share."""

from __future__ import annotations

import argparse


def add_inference_speed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="run the network in this precision (fp16 on GPUs only); resize and argmax stay fp32")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convolutions (inference only)")
    parser.add_argument("--onednn", action="store_true",
                        help="CPU fp32: prepacked oneDNN convolutions, ResNet backbones in oneDNN's blocked layout "
                             "(logits within 1e-5)")
