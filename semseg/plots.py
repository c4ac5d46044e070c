"""Figures of runs and evaluations: training curves from the JSON-lines run log, and confusion matrices.

matplotlib is optional (the ``vis`` extra) and imported only here, when a figure is drawn. Figures are
drawn on matplotlib's Agg canvas directly, without pyplot, so the backend of a notebook or GUI session
that imports semseg is left alone.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["available_keys", "check_matplotlib", "find_run_logs", "plot_confusion_matrix", "plot_run_curves", "read_run_log",
           "save_confusion_matrix"]

MODES = ("train", "val")


def _new_figure(what: str, **kwargs: Any) -> Any:
    """A matplotlib Figure on an Agg canvas; ImportError naming the extra when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{what} needs matplotlib, which is not installed: pip install 'semseg[vis]' "
                          "(or pip install matplotlib)") from error
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def check_matplotlib(what: str) -> None:
    """Raise the ImportError of :func:`_new_figure` now, before long work whose result would be plotted."""
    _new_figure(what)


# ----------------------------------------------------------------------------------------------- run logs


def find_run_logs(path: str | Path) -> list[Path]:
    """The JSON-lines logs of a work dir, oldest first: semseg's ``<timestamp>.jsonl`` files, else
    MMSegmentation's ``<timestamp>/vis_data/scalars.json``. A file path is returned as is."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no work dir or log file {path}")
    logs = sorted(path.glob("*.jsonl")) or sorted(path.glob("*/vis_data/scalars.json"))
    if not logs:
        raise FileNotFoundError(f"{path} holds no JSON-lines log (semseg train writes <timestamp>.jsonl, "
                                "MMSegmentation <timestamp>/vis_data/scalars.json)")
    return logs


def _number(value: Any) -> float | None:
    """A logged scalar as float ('nan' and 'inf' are logged as strings); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(value)
    return None


def _read_one(log: Path) -> dict[str, list[dict[str, float]]]:
    """Records of one log by mode, each ``{'iter': step, key: value, ...}`` with numeric values only."""
    records: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{log}, line {number}: not a JSON record ({error.msg})") from None
        # MMSegmentation's scalars.json has no 'mode': training records are those with a learning rate
        mode = row.pop("mode", None) or ("train" if "lr" in row else "val")
        step, other = row.pop("iter", None), row.pop("step", None)  # MMSegmentation logs both, or 'step'
        step = other if step is None else step
        if mode not in records or _number(step) is None:
            continue
        values = {key: v for key, value in row.items() if (v := _number(value)) is not None}
        if mode == "train" and "loss" not in values:
            terms = [v for key, v in values.items() if "loss" in key]
            if terms:
                values["loss"] = sum(terms)  # the total the trainer minimizes: every term named *loss*
        step = float(step)
        records[mode].append({"iter": int(step) if step.is_integer() else step, **values})
    return records


def read_run_log(path: str | Path) -> dict[str, list[dict[str, float]]]:
    """The records of a run (a work dir or one log file) by mode, ``'train'`` and ``'val'``: dicts with
    ``'iter'`` and the numeric values logged. A train record lacking a total ``'loss'`` gets the sum of its
    ``*loss*`` terms.

    A resumed run writes a new log: the logs are joined oldest first, each replacing the records of the
    ones before from its own first iteration on (iterations redone after a resume are shown once).
    """
    joined: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for log in find_run_logs(path):
        records = _read_one(log)
        steps = [row["iter"] for rows in records.values() for row in rows]
        if not steps:
            continue
        start = min(steps)
        for mode in MODES:
            joined[mode] = [row for row in joined[mode] if row["iter"] < start] + records[mode]
    return joined


def available_keys(records: Mapping[str, list[dict[str, float]]]) -> list[str]:
    """The value names found in any record (train keys first), without ``'iter'``."""
    keys: dict[str, None] = {}
    for mode in MODES:
        for row in records.get(mode, []):
            keys.update(dict.fromkeys(k for k in row if k != "iter"))
    return list(keys)


def _series(records: Mapping[str, list[dict[str, float]]], key: str) -> tuple[list[float], list[float]]:
    """(iterations, values) of ``key``: from the train records when logged there, else from val."""
    for mode in MODES:
        rows = [row for row in records.get(mode, []) if key in row]
        if rows:
            return [row["iter"] for row in rows], [row[key] for row in rows]
    return [], []


def plot_run_curves(runs: Mapping[str, Mapping[str, list[dict[str, float]]]], keys: Sequence[str],
                    out: str | Path) -> Path:
    """One panel per key (e.g. ``loss``, ``lr``, ``mIoU``) against the iteration, one line per run, as PNG.

    ``runs`` maps a run's name (its legend entry) to :func:`read_run_log` records. A key found in no run
    raises KeyError listing the keys there are.
    """
    if not keys:
        raise ValueError("no keys to plot")
    found = {key for records in runs.values() for key in available_keys(records)}
    missing = [key for key in keys if key not in found]
    if missing:
        raise KeyError(f"no {', '.join(repr(k) for k in missing)} in the log(s); logged keys: "
                       f"{', '.join(sorted(found)) or 'none'}")
    figure = _new_figure("plotting a run log", figsize=(8, 2.4 * len(keys) + 0.6), layout="constrained")
    axes = figure.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        for name, records in runs.items():
            steps, values = _series(records, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=name)
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
    if len(runs) > 1:
        axes[0].legend(fontsize="small")
    axes[-1].set_xlabel("iteration")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(", ".join(runs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


# -------------------------------------------------------------------------------------- confusion matrix


def _row_normalized(counts: np.ndarray) -> np.ndarray:
    """Each row over its sum (float64); NaN rows where a class has no labelled pixel."""
    sums = counts.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / sums


def plot_confusion_matrix(counts: np.ndarray, class_names: Sequence[str], out: str | Path,
                          title: str | None = None) -> Path:
    """Draw the row-normalized confusion matrix (rows: ground truth, columns: prediction; each row sums to
    1; a class with no labelled pixel is a gray row) from ``counts`` (C, C)."""
    counts = np.asarray(counts)
    num = len(class_names)
    if counts.shape != (num, num):
        raise ValueError(f"confusion counts of shape {counts.shape} for {num} class names")
    normalized = _row_normalized(counts)
    annotate = num <= 30
    cell = 0.45 if annotate else 0.16
    side = 2.5 + num * cell
    figure = _new_figure("plotting a confusion matrix", figsize=(side + 1.2, side), layout="constrained")
    ax = figure.subplots()
    from matplotlib import colormaps

    image = ax.imshow(normalized, vmin=0.0, vmax=1.0, cmap=colormaps["Blues"].with_extremes(bad="0.85"))
    figure.colorbar(image, ax=ax, shrink=0.8)
    font = 8 if annotate else 5
    ax.set_xticks(range(num), labels=list(class_names), rotation=90, fontsize=font)
    ax.set_yticks(range(num), labels=list(class_names), fontsize=font)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title or "confusion matrix, rows normalized (sum 1)", fontsize=10)
    if annotate:
        for (row, col), value in np.ndenumerate(normalized):
            if not math.isnan(value) and value >= 0.005:
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=font - 1,
                        color="white" if value > 0.5 else "black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


def save_confusion_matrix(counts: np.ndarray, class_names: Sequence[str], out: str | Path) -> list[Path]:
    """Write the plot to ``out`` (``.png`` added when it has no suffix) and the raw counts beside it as
    ``<stem>.npy`` (int64 (C, C)) and ``<stem>.csv`` (a header of class names, one row per label class).
    Returns the paths written: plot, npy, csv."""
    out = Path(out)
    if out.suffix == "":
        out = out.with_suffix(".png")
    if out.suffix.lower() in (".npy", ".csv"):
        raise ValueError(f"--confusion-matrix {out}: give the plot's file (.png, .pdf, .svg); the counts are "
                         "written beside it as .npy and .csv")
    counts = np.asarray(counts, dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    npy, table = out.with_suffix(".npy"), out.with_suffix(".csv")
    np.save(npy, counts)
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label \\ prediction", *class_names])
        for name, row in zip(class_names, counts.tolist(), strict=True):
            writer.writerow([name, *row])
    return [plot_confusion_matrix(counts, class_names, out), npy, table]
