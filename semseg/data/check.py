"""A full scan of a dataset's files (``--check-data``): every problem at once, and a class histogram.

Training finds a bad sample only when it draws it, and stops there. ``check_dataset`` reads every image
and label map (in threads: cv2 decodes without the GIL) and reports, grouped: images without label maps
and label maps without images, unreadable or truncated files, label maps whose size differs from the
image's, color-coded label maps where class indices are expected, and label values that are neither a
class nor the ignore index (each value with the files holding it). The histogram counts the pixels of
each class after ``reduce_zero_label`` and the class subset's ``label_map``, as training sees them.

    report = check_dataset(dataset)      # a dataset object (wrappers are unwrapped)
    print(report.format())
    report.raise_for_problems()          # DataError naming the first problems, if any
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from semseg.data.datasets.base import BaseSegDataset
from semseg.data.transforms.loading import (
    DataError,
    LabelSpec,
    bad_label_values,
    bad_values_message,
    read_image,
    read_label_map,
    remap_labels,
    to_index_map,
)

KIND_TITLES = {
    "missing": "missing files",
    "orphan": "label maps without images",
    "unreadable": "unreadable, corrupt or truncated files",
    "size": "label maps whose size differs from the image's",
    "channels": "label maps with several channels (color-coded) where class indices are expected",
    "values": "label maps with values that are neither a class nor the ignore index",
}


@dataclass
class Problem:
    """One file's problem: ``kind`` (a ``KIND_TITLES`` key), the file and a one-line message."""

    kind: str
    path: str
    message: str
    values: tuple[int, ...] = ()


@dataclass
class DataReport:
    """What ``check_dataset`` found in one dataset (``parts`` holds the reports of wrapped datasets)."""

    name: str
    num_samples: int = 0
    full: bool = True
    classes: tuple[str, ...] = ()
    ignore_index: int = 255
    reduce_zero_label: bool = False
    histogram: np.ndarray | None = None  # (num_classes,) int64 pixel counts
    ignored: int = 0  # pixels at ignore_index
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts: list[DataReport] = field(default_factory=list)

    def all_problems(self) -> list[Problem]:
        """This report's problems and those of its parts."""
        return self.problems + [p for part in self.parts for p in part.all_problems()]

    @property
    def ok(self) -> bool:
        """True when no file has a problem."""
        return not self.all_problems()

    def summary(self) -> str:
        """One line: the problem counts by kind, or that all files are usable."""
        problems = self.all_problems()
        if not problems:
            return f"{self.name}: {self.num_samples} samples checked, no problems"
        counts = {kind: sum(p.kind == kind for p in problems) for kind in KIND_TITLES}
        return f"{self.name}: " + "; ".join(f"{n} {KIND_TITLES[k]}" for k, n in counts.items() if n)

    def format(self, max_files: int = 5) -> str:
        """The report as text: histogram (share of the labeled pixels), then problems grouped by kind."""
        if self.parts:
            return "\n\n".join(part.format(max_files) for part in self.parts)
        lines = [f"data check: {self.name}, {self.num_samples} samples" + ("" if self.full else " (listing only)")]
        if self.histogram is not None:
            total = int(self.histogram.sum()) + self.ignored
            width = max([len(c) for c in self.classes] + [len(f"ignored ({self.ignore_index})")])
            lines.append("class histogram (pixels, share of all pixels):")
            for name, count in zip(self.classes, self.histogram.tolist(), strict=True):
                lines.append(f"  {name:<{width}}  {count:>12d}  {100 * count / max(total, 1):6.2f}%"
                             + ("  <- never present" if count == 0 else ""))
            lines.append(f"  {f'ignored ({self.ignore_index})':<{width}}  {self.ignored:>12d}  "
                         f"{100 * self.ignored / max(total, 1):6.2f}%")
        for kind, title in KIND_TITLES.items():
            found = [p for p in self.problems if p.kind == kind]
            if not found:
                continue
            lines.append(f"{title}: {len(found)}")
            if kind == "values":
                lines.extend(self._format_values(found, max_files))
            else:
                lines.extend(f"  {p.message}" for p in found[:max_files])
                if len(found) > max_files:
                    lines.append(f"  ... and {len(found) - max_files} more")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(self.summary())
        return "\n".join(lines)

    def _format_values(self, found: list[Problem], max_files: int) -> list[str]:
        by_value: dict[int, list[str]] = {}
        for problem in found:
            for value in problem.values:
                by_value.setdefault(value, []).append(problem.path)
        lines = []
        for value, paths in sorted(by_value.items()):
            shown = ", ".join(paths[:max_files]) + (f", ... ({len(paths)} files)" if len(paths) > max_files else "")
            lines.append(f"  value {value}: {shown}")
        lines.append(f"  {found[0].message}")
        return lines

    def raise_for_problems(self) -> None:
        """Raise ``DataError`` with the summary and the first problem, if there is any."""
        problems = self.all_problems()
        if problems:
            raise DataError(f"{self.summary()}; first: {problems[0].message}", problems[0].path, problems[0].kind)


def palette_to_index(label: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """A color-coded label map (H, W, 3) RGB -> (H, W) uint8 class indices; class k is ``palette[k]`` (RGB).

    Colors outside the palette become ``ignore_index``. cv2 reads BGR: pass ``image[:, :, ::-1]``.
    """
    if label.ndim != 3 or label.shape[2] < 3:
        raise ValueError(f"palette_to_index needs an (H, W, 3) RGB array, got shape {label.shape}")
    rgb = label[:, :, :3].astype(np.uint32)
    codes = rgb[:, :, 0] << 16 | rgb[:, :, 1] << 8 | rgb[:, :, 2]
    known = np.array([r << 16 | g << 8 | b for r, g, b in palette], np.uint32)
    order = np.argsort(known, kind="stable")
    pos = np.clip(np.searchsorted(known[order], codes), 0, len(known) - 1)
    found = known[order][pos] == codes
    return np.where(found, order[pos], ignore_index).astype(np.uint8)


def _leaves(dataset: Any) -> Iterable[Any]:
    """The datasets holding files inside wrappers (repeats are checked once)."""
    if isinstance(dataset, BaseSegDataset):
        yield dataset
    elif hasattr(dataset, "datasets"):
        for inner in dataset.datasets:
            yield from _leaves(inner)
    elif hasattr(dataset, "dataset"):
        yield from _leaves(dataset.dataset)
    else:
        yield dataset


def check_dataset(dataset: Dataset, full: bool = True, workers: int | None = None,
                  log: Callable[[str], None] | None = None) -> DataReport:
    """Check a dataset's files. ``full``: decode every image and label map (sizes, channels, values,
    histogram); otherwise only the pairing of the file lists. ``workers``: reading threads (default: the
    CPUs this process may use, at most 8). ``log`` gets a progress line every ~10 s of a long scan."""
    leaves = list(_leaves(dataset))
    reports = [_check_one(leaf, full, workers, log) for leaf in leaves]
    if len(reports) == 1:
        return reports[0]
    total = DataReport(name=type(dataset).__name__, num_samples=sum(r.num_samples for r in reports), full=full)
    total.parts = reports
    return total


def _check_one(dataset: Any, full: bool, workers: int | None, log: Callable[[str], None] | None) -> DataReport:
    name = type(dataset).__name__
    if not isinstance(dataset, BaseSegDataset):
        return DataReport(name=name, num_samples=len(dataset), full=full,
                          notes=[f"{name} reads no files (nothing to check)"])
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    spec = dataset.label_spec
    classes = tuple(dataset.metainfo.get("classes") or ())
    report = DataReport(name=f"{name} ({dataset.data_prefix.get('img_path')})", num_samples=len(infos), full=full,
                        classes=classes, ignore_index=dataset.ignore_index,
                        reduce_zero_label=bool(dataset.reduce_zero_label))
    from_split = bool(dataset.ann_file) and not os.path.isdir(dataset.ann_file)
    if not from_split:
        report.problems += [Problem("orphan", p, f"{p} has no image") for p in dataset.labels_without_images(infos)]
    if not full:
        return report
    if spec is not None:
        report.histogram = np.zeros(spec.num_classes, np.int64)
    workers = workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    start = last = time.monotonic()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, (problems, counts) in enumerate(pool.map(lambda info: _check_sample(info, spec), infos), 1):
            report.problems += problems
            if counts is not None and report.histogram is not None:
                report.histogram += counts[:spec.num_classes]
                report.ignored += int(counts[spec.ignore_index]) if spec.ignore_index < 256 else 0
            if log is not None and time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"data check: {done}/{len(infos)} samples, {last - start:.0f} s")
    report.notes += _hints(report, spec)
    return report


def _check_sample(info: dict, spec: LabelSpec | None) -> tuple[list[Problem], np.ndarray | None]:
    """The problems of one sample's files and its label histogram (256 bins, None when unreadable)."""
    problems: list[Problem] = []
    img_path, seg_path = info["img_path"], info.get("seg_map_path")
    shape = None
    try:
        shape = read_image(img_path).shape[:2]
    except (DataError, FileNotFoundError) as error:
        problems.append(Problem("missing" if isinstance(error, FileNotFoundError) else "unreadable", img_path,
                                str(error)))
    if seg_path is None:
        return problems, None
    try:
        label = to_index_map(read_label_map(seg_path), seg_path, spec)
    except FileNotFoundError as error:
        return problems + [Problem("missing", seg_path, str(error))], None
    except DataError as error:
        return problems + [Problem(error.kind, seg_path, str(error), error.values)], None
    if shape is not None and label.shape != shape:
        problems.append(Problem("size", seg_path, f"{seg_path} is {label.shape[0]}x{label.shape[1]} (HxW), its image "
                                                  f"{img_path} {shape[0]}x{shape[1]}"))
    reduce = bool(info.get("reduce_zero_label"))
    counts = np.bincount(remap_labels(label, reduce, info.get("label_map")).ravel(), minlength=256)
    if spec is not None:
        bad = bad_label_values(counts, spec)
        if bad:
            problems.append(Problem("values", seg_path, bad_values_message(f"label map {seg_path}", bad, spec, reduce), tuple(bad)))
    return problems, counts


def _hints(report: DataReport, spec: LabelSpec | None) -> list[str]:
    """Notes on the histogram: classes never present, and a reduce_zero_label that looks wrong."""
    if report.histogram is None or spec is None or not report.histogram.any():
        return []
    notes = []
    absent = [name for name, count in zip(report.classes, report.histogram.tolist(), strict=True) if count == 0]
    if absent:
        notes.append(f"{len(absent)} of {spec.num_classes} classes never appear: {', '.join(absent[:10])}"
                     + (", ..." if len(absent) > 10 else ""))
    if report.reduce_zero_label and report.histogram[-1] == 0 and report.ignored > 0:
        notes.append(f"reduce_zero_label=True turns label 0 into {spec.ignore_index} and the last class "
                     f"({report.classes[-1]}) never appears: if 0 is a class (not 'unlabeled'), set "
                     "reduce_zero_label=False")
    return notes


def check_config_data(cfg: Any, keys: Sequence[str], log: Callable[[str], None] | None = None) -> None:
    """``--check-data``: build the dataset of each of the config's dataloaders named in ``keys`` (those
    present), scan it fully, log the report (``print`` on rank 0 by default) and raise ``DataError`` if any
    file has a problem, before any work starts."""
    from semseg.build import build

    if log is None:
        log = print if int(os.environ.get("RANK", "0")) == 0 else (lambda line: None)
    reports = []
    for key in keys:
        if not cfg.get(key):
            continue
        dataset_cfg = cfg[key]["dataset"]
        dataset = build("dataset", dataset_cfg.to_dict() if hasattr(dataset_cfg, "to_dict") else dict(dataset_cfg))
        reports.append(check_dataset(dataset, full=True, log=log))
        log(f"[{key}] " + reports[-1].format())
    for report in reports:
        report.raise_for_problems()
