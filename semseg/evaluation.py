"""IoU metrics as MMSegmentation 1.2.2's ``IoUMetric`` defines them (aAcc, mIoU, mAcc, mDice, mFscore).

Evaluation keeps four per-class pixel counts summed over the dataset (intersection, union, predicted,
ground truth), never the predictions themselves, so memory does not grow with the dataset and the counts of
many processes add up with one ``all_reduce``.

Definitions (per class c, over all evaluated pixels, i.e. those whose label is not ``ignore_index``):

- IoU = |pred=c and label=c| / |pred=c or label=c|;  Acc = |pred=c and label=c| / |label=c|
- Dice = 2 |pred=c and label=c| / (|pred=c| + |label=c|)
- Precision = intersection / |pred=c|, Recall = intersection / |label=c|,
  Fscore = (1 + beta^2) P R / (beta^2 P + R)
- aAcc = sum of intersections / sum of labels.

A class absent from both prediction and label has 0/0 = NaN, which the class means skip (``nanmean``) unless
``nan_to_num`` replaces it. Results are in percent rounded to 2 decimals, as the oracle reports them.
Predictions or labels outside ``[0, num_classes)`` count in no class (the oracle's ``torch.histc`` drops them).

``reduce_zero_label`` is not a metric option: as in MMSegmentation, the label loader applies it (label 0 ->
255, others minus 1) before the metric sees the labels, so the metric never needs to know.

Two deliberate differences from the oracle, both in the last float digits only: counts are summed as exact
int64 (the oracle sums float32 histograms, inexact past 2^24 pixels per class), and ratios are float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

ALLOWED_METRICS = ("mIoU", "mDice", "mFscore")


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                        ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class pixel counts of one image: (intersect, union, pred_area, label_area), each int64 (C,).

    ``pred`` and ``label`` are integer label maps of the same shape (H, W); pixels whose label is
    ``ignore_index`` are left out, and values outside ``[0, num_classes)`` count in no class.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
    pred = pred.reshape(-1).long()
    label = label.reshape(-1).to(pred.device).long()
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]

    def area(values: torch.Tensor) -> torch.Tensor:
        values = values[(values >= 0) & (values < num_classes)]
        return torch.bincount(values, minlength=num_classes)

    area_intersect = area(pred[pred == label])
    area_pred = area(pred)
    area_label = area(label)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` in float64, NaN where both are 0 (and inf where only ``den`` is), as numpy/torch do."""
    return num.double() / den.double()


def total_area_to_metrics(intersect: torch.Tensor, union: torch.Tensor, pred_area: torch.Tensor,
                          label_area: torch.Tensor, metrics: Sequence[str] = ("mIoU",),
                          nan_to_num: float | None = None, beta: float = 1) -> dict[str, torch.Tensor]:
    """Fractions (not percent) from dataset-wide counts (each (C,)): ``aAcc`` (0-d) and per-class (C,) values.

    Keys: ``aAcc``, then per metric ``IoU``/``Acc`` (mIoU), ``Dice``/``Acc`` (mDice), ``Fscore``/``Precision``/
    ``Recall`` (mFscore), in the order asked. ``nan_to_num`` replaces NaN in every entry.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in ALLOWED_METRICS]
    if unknown:
        raise KeyError(f"unknown iou_metrics {unknown}; choose from {list(ALLOWED_METRICS)}")
    out = {"aAcc": _divide(intersect.sum(), label_area.sum())}
    for metric in metrics:
        if metric == "mIoU":
            out["IoU"] = _divide(intersect, union)
            out["Acc"] = _divide(intersect, label_area)
        elif metric == "mDice":
            out["Dice"] = _divide(2 * intersect, pred_area + label_area)
            out["Acc"] = _divide(intersect, label_area)
        else:
            precision = _divide(intersect, pred_area)
            recall = _divide(intersect, label_area)
            out["Fscore"] = (1 + beta**2) * precision * recall / (beta**2 * precision + recall)
            out["Precision"] = precision
            out["Recall"] = recall
    if nan_to_num is not None:
        out = {k: torch.nan_to_num(v, nan=float(nan_to_num)) for k, v in out.items()}
    return out


def _percent(value: float) -> float:
    """A fraction as percent rounded to 2 decimals (NaN stays NaN)."""
    return value if math.isnan(value) else round(value * 100, 2)


def _nanmean(values: torch.Tensor) -> float:
    """Mean over the non-NaN entries; NaN when all are NaN (numpy's ``nanmean``, without its warning)."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


class IoUMetric:
    """Accumulates per-class counts over a dataset and reports MMSegmentation's IoU metrics.

    Args:
        class_names: one name per class; their number is the number of classes C.
        ignore_index: label value left out of every count.
        iou_metrics: any of ``'mIoU'``, ``'mDice'``, ``'mFscore'``.
        nan_to_num: replaces NaN (a class absent from both prediction and label) before averaging.
        beta: weight of recall in the F-score.
        prefix: prepended as ``'<prefix>/'`` to the summary keys of ``compute``.
        collect_device: accepted for MMSegmentation configs; counts are summed with ``all_reduce`` instead.

    Use ``process(preds, labels)`` per batch, ``all_reduce()`` once when many processes evaluate, then
    ``compute()``. ``reset()`` starts over.
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int = 255,
                 iou_metrics: Sequence[str] | str = ("mIoU",), nan_to_num: float | None = None, beta: float = 1,
                 prefix: str | None = None, collect_device: str = "cpu", output_dir: str | None = None,
                 format_only: bool = False) -> None:
        if output_dir is not None or format_only:
            raise NotImplementedError("IoUMetric does not write predictions (output_dir/format_only); "
                                      "use `semseg predict ... --out DIR` for that")
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        if self.num_classes < 1:
            raise ValueError("IoUMetric needs at least one class name")
        self.ignore_index = ignore_index
        self.metrics = [iou_metrics] if isinstance(iou_metrics, str) else list(iou_metrics)
        unknown = [m for m in self.metrics if m not in ALLOWED_METRICS]
        if unknown:
            raise KeyError(f"unknown iou_metrics {unknown}; choose from {list(ALLOWED_METRICS)}")
        self.nan_to_num = nan_to_num
        self.beta = beta
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far."""
        self.counts = torch.zeros(4, self.num_classes, dtype=torch.long)  # intersect, union, pred, label
        self.num_images = 0

    def process(self, preds: torch.Tensor | Sequence[torch.Tensor],
                labels: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Add a batch: ``preds`` and ``labels`` are (N, H, W) tensors or sequences of (H, W) label maps.

        A (1, H, W) map per image is accepted too (squeezed, as the oracle does). Sizes may differ between
        images but each prediction must match its label.
        """
        if len(preds) != len(labels):
            raise ValueError(f"got {len(preds)} predictions but {len(labels)} labels")
        for pred, label in zip(preds, labels, strict=True):
            pred = pred.squeeze(0) if pred.dim() == 3 else pred
            label = label.squeeze(0) if label.dim() == 3 else label
            areas = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
            self.counts += torch.stack(areas).cpu()
            self.num_images += 1

    def state_tensors(self) -> torch.Tensor:
        """The accumulated counts, int64 (4, C): rows intersect, union, pred area, label area."""
        return self.counts

    def merge(self, other: IoUMetric | torch.Tensor) -> None:
        """Add another metric's counts (or a (4, C) count tensor) to this one."""
        counts = other.counts if isinstance(other, IoUMetric) else other
        if counts.shape != self.counts.shape:
            raise ValueError(f"cannot merge counts of shape {tuple(counts.shape)} into {tuple(self.counts.shape)}")
        self.counts += counts.to(self.counts)
        if isinstance(other, IoUMetric):
            self.num_images += other.num_images

    def all_reduce(self) -> None:
        """Sum the counts over all processes (no-op unless ``torch.distributed`` is initialized).

        Every process must call it. Each image must have been processed by exactly one process: a sampler
        that pads the dataset to equal shares would count the padded images twice.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        packed = torch.cat([self.counts.flatten(), torch.tensor([self.num_images])]).to(device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        self.counts = packed[:-1].view(4, self.num_classes).clone()
        self.num_images = int(packed[-1])

    def compute(self) -> dict:
        """Summary metrics in percent (``aAcc``, ``mIoU``, ``mAcc``, ...) plus ``per_class``.

        ``per_class`` maps each class name to its values in percent (``IoU``, ``Acc``, ``Dice``, ``Fscore``,
        ``Precision``, ``Recall``, as asked); NaN marks a class with nothing to measure.
        """
        values = total_area_to_metrics(*self.counts, metrics=self.metrics, nan_to_num=self.nan_to_num,
                                       beta=self.beta)
        results: dict = {}
        for key, value in values.items():
            name = key if key == "aAcc" else "m" + key
            results[f"{self.prefix}/{name}" if self.prefix else name] = _percent(_nanmean(value.reshape(-1)))
        per_class_keys = [k for k in values if k != "aAcc"]
        results["per_class"] = {
            name: {key: _percent(float(values[key][c])) for key in per_class_keys}
            for c, name in enumerate(self.class_names)
        }
        return results


def format_table(per_class: dict[str, dict[str, float]]) -> str:
    """A per-class results table (``compute()['per_class']``) as aligned text for logs."""
    columns = next(iter(per_class.values()), {}).keys()
    rows = [["Class", *columns]] + [[name, *(f"{v:.2f}" for v in vals.values())] for name, vals in per_class.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule]
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.rjust(w) if j else cell.ljust(w)
                                       for j, (cell, w) in enumerate(zip(row, widths, strict=True))) + " |")
        if i == 0:
            lines.append(rule)
    lines.append(rule)
    return "\n".join(lines)


def confusion_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Pixel counts of one image, int64 (C, C): entry [i, j] counts pixels labelled i and predicted j.

    Pixels are left out as in :func:`intersect_and_union`: those labelled ``ignore_index``, and those whose
    label or prediction is outside ``[0, num_classes)``. The diagonal is IoUMetric's per-class intersection
    and the row sums its label areas; the column sums are its predicted areas when every label is a class
    or ``ignore_index`` (IoUMetric also counts the predictions at pixels labelled outside the classes).
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
    pred = pred.reshape(-1).long()
    label = label.reshape(-1).to(pred.device).long()
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes) & (pred >= 0) & (pred < num_classes)
    pairs = label[keep] * num_classes + pred[keep]
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates a dataset's confusion matrix: ``counts`` int64 (C, C), rows the labels, columns the
    predictions. Same interface as :class:`IoUMetric` (``process``, ``all_reduce``), which it does not
    change: evaluate with both to get metrics and the matrix from one pass.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix needs at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def process(self, preds: torch.Tensor | Sequence[torch.Tensor],
                labels: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Add a batch: (N, H, W) tensors or sequences of (H, W) (or (1, H, W)) label maps."""
        if len(preds) != len(labels):
            raise ValueError(f"got {len(preds)} predictions but {len(labels)} labels")
        for pred, label in zip(preds, labels, strict=True):
            pred = pred.squeeze(0) if pred.dim() == 3 else pred
            label = label.squeeze(0) if label.dim() == 3 else label
            self.counts += confusion_counts(pred, label, self.num_classes, self.ignore_index).cpu()

    def all_reduce(self) -> None:
        """Sum the counts over all processes (no-op unless ``torch.distributed`` is initialized)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        counts = self.counts.to(device)
        dist.all_reduce(counts)
        self.counts = counts.cpu()

    def normalized(self) -> torch.Tensor:
        """float64 (C, C): each row divided by its sum, so a row is the distribution of predictions for
        the pixels of that class (rows sum to 1); NaN rows for classes with no labelled pixel."""
        return _divide(self.counts, self.counts.sum(dim=1, keepdim=True))
