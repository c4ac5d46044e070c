"""bf16 inference (``init_model(..., precision='bf16')``) on a model trained here on the synthetic data: it
gives at least 99.5 % of the validation pixels the float32 class, and the validation mIoU barely moves.

Trains in-process (80 iterations, batch 4, 96x96 crops, one thread: ~10 s) rather than through ``semseg
train``, so that the test holds the model and the validation loader itself."""

from __future__ import annotations

import pytest
import torch
from e2e_helpers import CONFIG

import semseg
from semseg.config import load_config
from semseg.engine.evaluate import build_eval_loader, build_metric, predict_batch
from semseg.engine.trainer import Trainer

MAX_ITERS = 80
TRAIN = {"train_dataloader.batch_size": 4, "train_cfg.max_iters": MAX_ITERS, "train_cfg.val_interval": MAX_ITERS,
         "default_hooks.logger.interval": MAX_ITERS, "default_hooks.checkpoint.interval": MAX_ITERS,
         "randomness.seed": 0}
LEARNT_MIOU = 50.0  # untrained: ~11; 80 iterations reach ~75-85 on the validation set


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config path, checkpoint) of the synthetic FCN after 80 iterations."""
    work_dir = tmp_path_factory.mktemp("bf16") / "work"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # other processes share the 2 cores; spinning OpenMP threads would stall
    try:
        Trainer(load_config(CONFIG, TRAIN), work_dir, device="cpu").train()
    finally:
        torch.set_num_threads(threads)
    return work_dir / CONFIG.name, work_dir / f"iter_{MAX_ITERS}.pth"


def predictions(model, loader) -> tuple[list[torch.Tensor], dict]:
    """Label maps of every validation image, and the metric's scores."""
    metric = build_metric(model.cfg.get("val_evaluator"), loader.dataset)
    labels = []
    with torch.no_grad():
        for batch in loader:
            predicted = predict_batch(model, batch, torch.device("cpu"))
            metric.process(predicted, [label.cpu() for label in batch["gt_sem_seg"]])
            labels += predicted
    return labels, metric.compute()


def test_bf16_keeps_the_fp32_class_of_the_pixels(trained):
    config, checkpoint = trained
    fp32 = semseg.init_model(config, checkpoint)
    bf16 = semseg.init_model(config, checkpoint, precision="bf16")
    assert bf16.precision == "bf16"
    loader = build_eval_loader(fp32.cfg.val_dataloader.to_dict())  # 32 images of 128x128
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exact, exact_scores = predictions(fp32, loader)
        reduced, reduced_scores = predictions(bf16, loader)
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            autocast_on = not torch.equal(bf16.inference(x), fp32.inference(x))
    finally:
        torch.set_num_threads(threads)
    same = sum(int((a == b).sum()) for a, b in zip(exact, reduced, strict=True))
    total = sum(a.numel() for a in exact)
    agreement = same / total
    change = reduced_scores["mIoU"] - exact_scores["mIoU"]
    print(f"bf16 vs fp32 on {len(exact)} synthetic validation images: {100 * agreement:.3f} % of pixels "
          f"agree; mIoU {exact_scores['mIoU']:.2f} -> {reduced_scores['mIoU']:.2f} ({change:+.2f})")
    assert len(exact) == 32 and exact_scores["mIoU"] >= LEARNT_MIOU
    assert autocast_on
    assert agreement >= 0.995
    assert abs(change) < 1.0
