"""Run a segmentor over a dataset and score it: the validation and test loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from semseg.models.inference import tta_inference
from semseg.nn import resize


def build_eval_loader(dataloader_cfg: dict, seed: int = 0):
    """A loader for evaluation: in order, and each image on exactly one process (no padding of the last
    shard, which would count images twice in the metric's sums)."""
    from semseg.data.loader import build_dataloader

    cfg = dict(dataloader_cfg)
    cfg["sampler"] = {**(cfg.get("sampler") or {"type": "DefaultSampler"}), "shuffle": False, "round_up": False}
    return build_dataloader(cfg, seed=seed)


def predict_batch(model: torch.nn.Module, batch: dict, device: torch.device, tta: bool = False) -> list[torch.Tensor]:
    """Label maps (H, W) at each image's original size for a collated batch of packed samples.

    Each image is normalized, inferred on its own (images of a batch may differ in size), cropped to its
    valid region and resized back to ``ori_shape`` (bilinear on the logits, as MMSegmentation does).
    """
    labels = []
    for image, meta in zip(batch["inputs"], batch["meta"], strict=True):
        x, _ = model.data_preprocessor([image.to(device)])
        scores = tta_inference(model, x, scale_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)) if tta else model.inference(x)
        height, width = meta["img_shape"]
        scores = scores[:, :, :height, :width]
        scores = resize(scores, size=tuple(meta["ori_shape"]), mode="bilinear", align_corners=model.align_corners,
                        warning=False)
        labels.append(model.predict_labels(scores, probabilities=tta)[0].cpu())
    return labels


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable[dict],
    metric,
    device: torch.device,
    tta: bool = False,
    on_prediction: Callable[[dict, torch.Tensor], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Score ``model`` on every batch of ``loader`` with ``metric`` (counts summed across processes, so
    each process must see a disjoint shard). Returns ``metric.compute()``: summary values and ``per_class``.

    ``on_prediction(meta, labels)`` sees each prediction (for writing PNGs or overlays).
    """
    was_training = model.training
    model.eval()
    try:
        for step, batch in enumerate(loader):
            predictions = predict_batch(model, batch, device, tta=tta)
            ground_truth = batch.get("gt_sem_seg")
            if ground_truth is not None:
                metric.process(predictions, [label.cpu() for label in ground_truth])
            if on_prediction is not None:
                for meta, labels in zip(batch["meta"], predictions, strict=True):
                    on_prediction(meta, labels)
            if progress is not None:
                progress(step + 1)
    finally:
        model.train(was_training)
    metric.all_reduce()
    return metric.compute()
