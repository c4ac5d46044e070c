"""Run a segmentor over a dataset and score it: the validation and test loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from semseg.evaluation import IoUMetric
from semseg.models.inference import predict_views


def build_eval_loader(dataloader_cfg: dict, seed: int = 0):
    """A loader for evaluation that serves every image exactly once over all processes, in order.

    The config's sampler is replaced by an unshuffled ``DefaultSampler(round_up=False)``: process r takes
    images r, r + world_size, ... and, when the dataset size does not divide by the number of processes,
    the last ones get one image fewer (MMEngine's default sampler instead pads the last round by repeating
    images). ``drop_last`` is off. So the counts that ``IoUMetric.all_reduce`` sums are those of one process
    scoring the whole set (an ``InfiniteSampler`` or ``drop_last`` in a val config would never end or
    would leave images out).
    """
    from semseg.data.loader import build_dataloader

    cfg = dict(dataloader_cfg)
    cfg["sampler"] = {"type": "DefaultSampler", "shuffle": False, "round_up": False}
    cfg["drop_last"] = False
    return build_dataloader(cfg, seed=seed)


def predict_batch(model: torch.nn.Module, batch: dict | list, device: torch.device) -> list[torch.Tensor]:
    """Label maps (H, W) at each image's original size for a collated batch.

    ``batch`` is a dict of lists (one packed sample per image) or, from a ``TestTimeAug`` pipeline, a
    list holding each image's list of augmented views, whose probabilities are averaged. Each image is
    inferred on its own (images of a batch may differ in size).
    """
    samples = batch if isinstance(batch, list) else [[sample] for sample in _unbatch(batch)]
    predictions = []
    for views in samples:
        scores, probabilities = predict_views(model, views, device)
        predictions.append(model.predict_labels(scores, probabilities=probabilities)[0].cpu())
    return predictions


def _unbatch(batch: dict) -> list[dict]:
    return [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def ground_truth(batch: dict | list) -> list[torch.Tensor] | None:
    """The batch's label maps (from the first view of each image under TTA), or None without labels."""
    first = [views[0] for views in batch] if isinstance(batch, list) else _unbatch(batch)
    if any("gt_sem_seg" not in sample for sample in first):
        return None
    return [sample["gt_sem_seg"] for sample in first]


def metas(batch: dict | list) -> list[dict]:
    return [views[0]["meta"] for views in batch] if isinstance(batch, list) else list(batch["meta"])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable[dict],
    metric,
    device: torch.device,
    on_prediction: Callable[[dict, torch.Tensor], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Score ``model`` on every batch of ``loader`` with ``metric`` (counts summed across processes, so
    each process must see a disjoint shard). Returns ``metric.compute()``: summary values and ``per_class``.

    ``on_prediction(meta, labels)`` sees each prediction (for writing PNGs or overlays). A loader whose
    pipeline ends in ``TestTimeAug`` gives test-time-augmented predictions.
    """
    was_training = model.training
    model.eval()
    try:
        for step, batch in enumerate(loader):
            predictions = predict_batch(model, batch, device)
            truth = ground_truth(batch)
            if truth is not None:
                metric.process(predictions, [label.cpu() for label in truth])
            if on_prediction is not None:
                for meta, prediction in zip(metas(batch), predictions, strict=True):
                    on_prediction(meta, prediction)
            if progress is not None:
                progress(step + 1)
    finally:
        model.train(was_training)
    metric.all_reduce()
    return metric.compute()


def build_metric(evaluator_cfg: dict | None, dataset) -> IoUMetric:
    """The config's ``val_evaluator`` (IoUMetric) with the dataset's class names."""
    cfg = dict(evaluator_cfg.to_dict() if hasattr(evaluator_cfg, "to_dict") else (evaluator_cfg or {"type": "IoUMetric"}))
    metric_type = cfg.pop("type", "IoUMetric")
    if metric_type != "IoUMetric":
        raise NotImplementedError(f"evaluator type {metric_type!r}: only IoUMetric is supported")
    classes = (getattr(dataset, "metainfo", None) or {}).get("classes")
    return IoUMetric(class_names=classes, **cfg)
