"""The README's main job: train, evaluate and use a model on the built-in synthetic dataset, on a CPU,
in a few minutes, with nothing to download.

1. ``semseg train`` on ``fcn_r18-d8_1xb8-600_synthetic-96x96`` (textured shapes, 5 classes), validating
   as it goes and keeping the best checkpoint;
2. reload the best checkpoint with ``init_model`` and segment held-out images with whole and
   sliding-window inference, writing colored overlays next to the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CONFIG = "fcn_r18-d8_1xb8-600_synthetic-96x96"


def run_demo(work_dir: Path, max_iters: int | None = None) -> dict:
    """Train, evaluate and predict; returns the final validation metrics."""
    from semseg.apis import inference_model, init_model, show_result
    from semseg.config import load_config
    from semseg.data.datasets.synthetic import generate_sample, synthetic_metainfo
    from semseg.engine.trainer import Trainer

    options = {} if max_iters is None else {"train_cfg.max_iters": max_iters, "train_cfg.val_interval": max_iters}
    cfg = load_config(CONFIG, options)
    trainer = Trainer(cfg, work_dir)
    trainer.train()
    scores = trainer.last_scores
    checkpoint = trainer.best_path or trainer.last_good
    print(f"\nvalidation: mIoU {scores['mIoU']:.2f}  mAcc {scores['mAcc']:.2f}  aAcc {scores['aAcc']:.2f}"
          f"  (best checkpoint {checkpoint})")

    metainfo = synthetic_metainfo(cfg.num_classes)
    palette = np.asarray(metainfo["palette"], dtype=np.uint8)[:, ::-1]  # RGB -> BGR
    out_dir = work_dir / "predictions"
    modes = {
        "whole": {"model.test_cfg.mode": "whole"},
        "slide": {"model.test_cfg.mode": "slide", "model.test_cfg.crop_size": (64, 64),
                  "model.test_cfg.stride": (48, 48)},
    }
    models = {mode: init_model(CONFIG, checkpoint=checkpoint, cfg_options=opts) for mode, opts in modes.items()}
    for index in range(4):
        image, label = generate_sample(index, img_size=(160, 224), num_classes=cfg.num_classes, seed=7, split="test")
        line = [f"test image {index}:"]
        for mode, model in models.items():
            labels = inference_model(model, image).labels
            show_result(image, labels, palette=palette, out_file=out_dir / f"{index}_{mode}.png")
            line.append(f"{mode} pixel accuracy {(labels == label).mean():.1%}")
        show_result(image, label, palette=palette, out_file=out_dir / f"{index}_truth.png")
        cv2.imwrite(str(out_dir / f"{index}_image.png"), image)
        print("  ".join(line))
    print(f"colored predictions (whole, slide) and ground truth in {out_dir}")
    return scores
