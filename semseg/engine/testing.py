"""``semseg test``: score a checkpoint on the config's test set, optionally writing predictions."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from semseg.apis import init_model, show_result
from semseg.engine import distributed
from semseg.engine.evaluate import build_eval_loader, build_metric, evaluate
from semseg.evaluation import ConfusionMatrix, IoUMetric, format_table


def _writer(dataset, show_dir: str | None, out_dir: str | None):
    """A callback that saves each prediction as a label PNG and/or a colored overlay.

    Files are named after the image file; samples without one (the in-memory synthetic dataset) are
    named by their index, and their overlay is drawn on the dataset's image. The evaluation loader
    serves this process the samples ``rank, rank + world_size, ...`` in order, which gives the index.
    """
    metainfo = getattr(dataset, "metainfo", {}) or {}
    palette = metainfo.get("palette")
    palette = np.asarray(palette, dtype=np.uint8)[:, ::-1] if palette is not None else None  # RGB -> BGR
    to_label_ids = getattr(dataset, "train_id_to_label_id", None)
    indices = itertools.count(distributed.rank(), distributed.world_size())

    def write(meta: dict, labels: torch.Tensor) -> None:
        index = next(indices)
        img_path = meta.get("img_path")
        stem = Path(img_path).stem if img_path else f"{index:05d}"
        array = labels.numpy()
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            out = to_label_ids(array) if to_label_ids is not None else array
            cv2.imwrite(str(Path(out_dir) / f"{stem}.png"), out.astype(np.uint8))
        if show_dir is not None:
            image = img_path or (dataset.get_data_info(index).get("img") if hasattr(dataset, "get_data_info") else None)
            if image is not None:
                show_result(image, array, palette=palette, out_file=Path(show_dir) / f"{stem}.png")

    return write


def run_test(config, checkpoint, cfg_options=None, tta: bool = False, show_dir: str | None = None,
             out_dir: str | None = None, device: str | None = None, work_dir: str | None = None,
             precision: str = "fp32", fuse: bool = False, confusion_matrix: str | None = None,
             onednn: bool = False, progress: bool = True) -> dict:
    """Evaluate ``checkpoint`` with ``config``'s ``test_dataloader`` and ``test_evaluator``; print and
    return the metrics (with ``work_dir``, also write them to ``<work_dir>/test_metrics.json``).

    ``precision``, ``fuse`` and ``onednn`` are :func:`~semseg.apis.init_model`'s inference options. ``confusion_matrix``
    names a plot file (PNG) for the row-normalized confusion matrix, written with its raw counts beside it
    (``.npy``, ``.csv``; see :func:`semseg.plots.save_confusion_matrix`). ``progress`` shows the batches done on
    stderr (a bar with rate and ETA on a terminal, a line at every tenth elsewhere; rank 0 only)."""
    if confusion_matrix is not None:
        from semseg.plots import check_matplotlib

        check_matplotlib("--confusion-matrix")  # before the evaluation, not after it
    _, _, chosen = distributed.init_distributed(device)
    model = init_model(config, checkpoint, device=chosen, cfg_options=cfg_options, precision=precision, fuse=fuse,
                       onednn=onednn)
    cfg = model.cfg
    if not cfg.get("test_dataloader"):
        raise KeyError(f"config {cfg.filename or config!r} has no test_dataloader")
    loader_cfg = cfg.test_dataloader.to_dict()
    if tta:
        if not cfg.get("tta_pipeline"):
            raise KeyError(f"--tta needs the config's tta_pipeline (a TestTimeAug step); {cfg.filename} has none")
        loader_cfg["dataset"]["pipeline"] = cfg.to_dict()["tta_pipeline"]
    loader = build_eval_loader(loader_cfg)
    metric = build_metric(cfg.get("test_evaluator"), loader.dataset)
    confusion = ConfusionMatrix(metric.num_classes, metric.ignore_index) if confusion_matrix else None
    callback = _writer(loader.dataset, show_dir, out_dir) if (show_dir or out_dir) else None
    display = _display(len(loader)) if progress and distributed.is_main_process() else None
    scores = evaluate(model, loader, metric if confusion is None else _WithConfusion(metric, confusion), chosen,
                      on_prediction=callback, progress=display)
    if distributed.is_main_process():
        print(format_table(scores["per_class"]))
        summary = {k: v for k, v in scores.items() if k != "per_class"}
        print("  ".join(f"{k}: {v:.2f}" for k, v in summary.items()))
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            (Path(work_dir) / "test_metrics.json").write_text(json.dumps(summary, indent=2))
        if confusion is not None:
            from semseg.plots import save_confusion_matrix

            written = save_confusion_matrix(confusion.counts.numpy(), metric.class_names, confusion_matrix)
            print("confusion matrix: " + ", ".join(str(path) for path in written))
    return scores


def _display(total: int) -> Callable[[int], None]:
    """``progress(batches done)`` for :func:`evaluate`, drawn by the console's progress display."""
    from semseg.cli.progress import ConsoleProgress  # a console display: imported only when shown

    show = ConsoleProgress("test")
    show(0, total)
    return lambda done: show(done, total)


class _WithConfusion:
    """The test metric with a confusion matrix fed the same predictions; computes the metric's results."""

    def __init__(self, metric: IoUMetric, confusion: ConfusionMatrix) -> None:
        self.metric = metric
        self.confusion = confusion

    def process(self, preds: list[torch.Tensor], labels: list[torch.Tensor]) -> None:
        self.metric.process(preds, labels)
        self.confusion.process(preds, labels)

    def all_reduce(self) -> None:
        self.metric.all_reduce()
        self.confusion.all_reduce()

    def compute(self) -> dict:
        return self.metric.compute()
