"""The README's main job for now: a zoo model end to end on the CPU without any download.

Builds ``fcn_r18-d8_4xb2-80k_cityscapes-512x1024`` (randomly initialized: weights cannot be downloaded
here), writes its checkpoint, loads it back strictly through ``init_model``, and segments a generated
image with whole and sliding-window inference.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch

ZOO_NAME = "fcn_r18-d8_4xb2-80k_cityscapes-512x1024"


def sample_image(height: int = 256, width: int = 512, seed: int = 0) -> np.ndarray:
    """A street-like BGR picture: sky, road, and a few colored boxes and discs."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (200, 160, 110)
    image[height // 2:] = (90, 90, 90)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 60)), int(rng.integers(height // 4, height - 40))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + 60, y + 40), color, -1)
        else:
            cv2.circle(image, (x + 30, y + 20), 20, color, -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def run_demo(work_dir: Path) -> None:
    from semseg.apis import inference_model, init_model, show_result
    from semseg.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"building {ZOO_NAME}")
    fresh = init_model(ZOO_NAME)
    checkpoint = work_dir / "fcn_r18_random.pth"
    save_checkpoint({"state_dict": fresh.state_dict(), "meta": {"note": "random weights"}}, checkpoint)
    print(f"wrote {checkpoint} ({checkpoint.stat().st_size / 2**20:.1f} MiB, {len(fresh.state_dict())} tensors)")

    image = sample_image()
    image_path = work_dir / "sample.png"
    cv2.imwrite(str(image_path), image)
    results = {}
    for mode, options in {
        "whole": {"model.test_cfg.mode": "whole"},
        "slide": {"model.test_cfg.mode": "slide", "model.test_cfg.crop_size": (192, 192),
                  "model.test_cfg.stride": (128, 128)},
    }.items():
        model = init_model(ZOO_NAME, checkpoint=checkpoint, cfg_options=options)
        start = time.perf_counter()
        result = inference_model(model, image_path)
        elapsed = time.perf_counter() - start
        results[mode] = result
        classes, counts = np.unique(result.labels, return_counts=True)
        top = ", ".join(f"{c}:{n}" for c, n in sorted(zip(classes, counts, strict=True), key=lambda t: -t[1])[:5])
        print(f"{mode:5s} inference: labels {result.labels.shape}, logits {tuple(result.logits.shape)}, "
              f"{elapsed:.2f}s; top classes (class:pixels) {top}")
        show_result(image, result.labels, out_file=work_dir / f"overlay_{mode}.png")
    agree = (results["whole"].labels == results["slide"].labels).mean()
    print(f"whole and slide agree on {agree:.1%} of pixels; outputs in {work_dir}")
