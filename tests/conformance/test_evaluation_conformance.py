"""IoUMetric vs MMSegmentation 1.2.2's on the same random predictions and labels: every metric equal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracle import require_oracle

from semseg.evaluation import IoUMetric

CLASSES = [f"class{i}" for i in range(8)]
SIZES = [(17, 23), (31, 9), (8, 8), (40, 33)]


def random_batch(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Label maps of several sizes with 255 pixels; class 7 never appears, 6 only predicted, 5 only labelled."""
    gen = torch.Generator().manual_seed(seed)
    preds, labels = [], []
    for h, w in SIZES:
        label = torch.randint(0, 6, (h, w), generator=gen)
        pred = torch.where(torch.rand(h, w, generator=gen) < 0.6, label, torch.randint(0, 7, (h, w), generator=gen))
        pred[pred == 5] = 4
        label[torch.rand(h, w, generator=gen) < 0.15] = 255
        preds.append(pred)
        labels.append(label)
    return preds, labels


def oracle_metrics(preds, labels, **kwargs) -> tuple[dict, dict]:
    """The oracle's summary dict (from ``evaluate``) and its per-class arrays (percent, rounded)."""
    from mmseg.evaluation import IoUMetric as OracleIoUMetric

    metric = OracleIoUMetric(**kwargs)
    metric.dataset_meta = dict(classes=CLASSES)
    for i in range(0, len(preds), 2):  # batches of 2, as the loader would give them
        samples = [dict(pred_sem_seg=dict(data=p[None]), gt_sem_seg=dict(data=g[None]))
                   for p, g in zip(preds[i:i + 2], labels[i:i + 2], strict=True)]
        metric.process(data_batch={}, data_samples=samples)
    totals = [sum(area) for area in zip(*metric.results, strict=True)]
    per_class = metric.total_area_to_metrics(*totals, kwargs.get("iou_metrics", ["mIoU"]),
                                             kwargs.get("nan_to_num"), kwargs.get("beta", 1))
    per_class.pop("aAcc")
    per_class = {k: np.round(v * 100, 2) for k, v in per_class.items()}
    return metric.evaluate(len(preds)), per_class


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-4


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(iou_metrics=["mIoU", "mDice", "mFscore"]),
    dict(iou_metrics=["mFscore"], beta=2),
    dict(iou_metrics=["mIoU", "mDice"], nan_to_num=0),
    dict(iou_metrics=["mIoU"], nan_to_num=-1, ignore_index=3),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_iou_metric_matches_oracle(kwargs, seed):
    require_oracle()
    preds, labels = random_batch(seed)
    expected, expected_per_class = oracle_metrics(preds, labels, **kwargs)

    ours = IoUMetric(CLASSES, **kwargs)
    ours.process(torch.stack(preds[2:3]), torch.stack(labels[2:3]))  # an (N, H, W) batch
    ours.process(preds[:2] + preds[3:], labels[:2] + labels[3:])  # and a list of maps of different sizes
    result = ours.compute()
    per_class = result.pop("per_class")

    assert set(result) == set(expected)
    for key, value in expected.items():
        assert same(result[key], float(value)), (key, result[key], value)
    for key, values in expected_per_class.items():
        for name, value in zip(CLASSES, values, strict=True):
            assert same(per_class[name][key], float(value)), (key, name, per_class[name][key], value)
    # The random data must exercise NaN classes (absent from both) unless nan_to_num replaced them.
    if kwargs.get("nan_to_num") is None:
        assert math.isnan(per_class["class7"]["IoU" if "IoU" in per_class["class7"] else "Fscore"])
