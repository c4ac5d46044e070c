"""``BaseSegDataset``: image / label-map pairs found in two folders, as MMSegmentation 1.x lays them out.

A sample is ``img_dir/<stem><img_suffix>`` with its label map ``ann_dir/<stem><seg_map_suffix>``. The stems
come from a split file (``ann_file``, one stem a line, kept in file order) or, without one, from every file
under ``img_dir`` (recursively, hidden files skipped) that ends with ``img_suffix``, sorted by path. The
paths are joined with ``os.path.join`` exactly as MMSegmentation joins them, so both list the same strings.

Each sample's info dict (``img_path``, ``seg_map_path``, ``label_map``, ``reduce_zero_label``,
``seg_fields``, ``sample_idx``) goes through the pipeline (``LoadImageFromFile``, ``LoadAnnotations``, ...).
A subset of the class names in ``metainfo`` builds a ``label_map`` (old id -> new id, 255 for dropped
classes) that ``LoadAnnotations`` applies.

Bad data is found early: listing the files reports images without label maps (an error) and, for a folder
scan, label maps without images (a warning); each sample's label map is checked as it loads (size,
channels, and outside ``test_mode`` values: ``__getitem__`` adds a ``LabelSpec`` of the classes and
``ignore_index`` to the results as ``label_spec``; ``get_data_info`` stays MMSegmentation's), and any failure
of a sample's pipeline is raised as ``SampleError`` naming the sample's files, also from a data-loader worker. ``semseg.data.check.check_dataset`` scans every file at once.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from semseg.data.transforms import Compose
from semseg.data.transforms.loading import DataError, LabelSpec

PathLike = str | os.PathLike


class SampleError(DataError):
    """A sample whose loading failed, named by its index and files; the cause is chained (``__cause__``).

    Raised again by a ``DataLoader`` worker, it arrives rebuilt from the worker's formatted traceback: the
    message is then the original one-line message, and the worker's traceback is kept as a note (shown
    with the traceback, not in ``str``), so that the first line a user reads names the file.
    """

    def __init__(self, message: str, path: str | None = None):
        worker = re.match(r"Caught \w+ in (DataLoader worker process \d+)\.\nOriginal ", message)
        note = None
        if worker:
            tag = f"{type(self).__module__}.{type(self).__qualname__}: "
            start = message.rfind(tag)
            note = "traceback in the " + message[worker.end():].strip()
            message = (message[start + len(tag):].strip() if start >= 0 else message) + f" (in {worker.group(1)})"
        super().__init__(message, path, "sample")
        if note:
            self.add_note(note)


def scan_files(folder: str, suffix: str) -> list[str]:
    """Paths relative to ``folder`` of the files under it (recursively) ending with ``suffix``.

    Hidden files (a leading dot) are skipped; folders are always entered. Not sorted.
    """
    found = []
    for entry in os.scandir(folder):
        if entry.is_file() and not entry.name.startswith("."):
            if entry.name.endswith(suffix):
                found.append(entry.name)
        elif entry.is_dir():
            found.extend(os.path.join(entry.name, name) for name in scan_files(entry.path, suffix))
    return found


def read_split_file(path: str) -> list[str]:
    """The stems listed in a split file, one a line, blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _load_metainfo(defaults: dict, metainfo: dict | None) -> dict:
    """The class's METAINFO updated by ``metainfo``; a string value naming a file becomes its lines."""
    meta = copy.deepcopy(defaults)
    for key, value in (metainfo or {}).items():
        if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
            value = read_split_file(os.fspath(value))
        meta[key] = copy.deepcopy(value)
    if meta.get("classes") is not None:
        meta["classes"] = tuple(meta["classes"])
    if meta.get("palette") is not None:
        meta["palette"] = [list(color) for color in meta["palette"]]
    return meta


class BaseSegDataset(Dataset):
    """Image/label-map pairs from ``data_root/data_prefix['img_path']`` and ``data_prefix['seg_map_path']``.

    Args:
        ann_file: split file of stems (relative to ``data_root``); empty: every image in ``img_path``.
        img_suffix / seg_map_suffix: file name endings (extension included); None: the class's default.
        metainfo: ``classes`` (a subset of the class's names remaps labels) and ``palette`` (RGB per class).
        data_root: folder that relative ``ann_file`` and ``data_prefix`` paths are joined to.
        data_prefix: ``img_path`` (images) and optionally ``seg_map_path`` (label maps).
        filter_cfg: accepted for config compatibility; semantic segmentation filters nothing.
        indices: keep the first n samples (last n when negative), or the samples at these positions.
        serialize_data: hold the sample list as one pickled byte array, so that loader workers share it
            instead of copying Python objects page by page.
        pipeline: transform configs (or callables) run on each sample's info dict.
        test_mode: a pipeline result of None is an error instead of a reason to draw another sample.
        lazy_init: defer listing the files until first use (``full_init``).
        max_refetch: how many other samples to try when the pipeline returns None.
        ignore_index: the label that is ignored in losses and metrics.
        reduce_zero_label: label 0 becomes 255 and the others shift down by one; None: the class's default.
        backend_args: only local files are read; ``None`` or ``dict(backend='local')``.
    """

    METAINFO: dict = {}
    IMG_SUFFIX = ".jpg"
    SEG_MAP_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = False
    NEEDS_ANN_FILE = False

    def __init__(
        self,
        ann_file: PathLike = "",
        img_suffix: str | None = None,
        seg_map_suffix: str | None = None,
        metainfo: dict | None = None,
        data_root: PathLike | None = None,
        data_prefix: dict | None = None,
        filter_cfg: dict | None = None,
        indices: int | Sequence[int] | None = None,
        serialize_data: bool = True,
        pipeline: Sequence[dict | Callable] = (),
        test_mode: bool = False,
        lazy_init: bool = False,
        max_refetch: int = 1000,
        ignore_index: int = 255,
        reduce_zero_label: bool | None = None,
        backend_args: dict | None = None,
    ):
        name = type(self).__name__
        if backend_args and backend_args.get("backend", "local") != "local":
            raise ValueError(f"{name}: only local files can be read, got backend_args={backend_args}")
        self.img_suffix = self.IMG_SUFFIX if img_suffix is None else img_suffix
        self.seg_map_suffix = self.SEG_MAP_SUFFIX if seg_map_suffix is None else seg_map_suffix
        self.reduce_zero_label = self.REDUCE_ZERO_LABEL if reduce_zero_label is None else reduce_zero_label
        self.ignore_index = ignore_index
        self.filter_cfg = copy.deepcopy(filter_cfg)
        self.indices = indices
        self.serialize_data = serialize_data
        self.test_mode = test_mode
        self.max_refetch = max_refetch

        self._metainfo = _load_metainfo(self.METAINFO, metainfo)
        self.label_map = self.get_label_map(self._metainfo.get("classes"))
        self._metainfo.update(label_map=self.label_map, reduce_zero_label=self.reduce_zero_label)
        self._metainfo["palette"] = self._palette()
        classes = self._metainfo.get("classes")
        self.label_spec = LabelSpec(len(classes), ignore_index, tuple(tuple(c) for c in self._metainfo["palette"])) \
            if classes else None

        self.data_root = os.fspath(data_root) if data_root is not None else None
        self.ann_file = os.fspath(ann_file)
        prefix = {"img_path": "", "seg_map_path": ""} if data_prefix is None else dict(data_prefix)
        self.data_prefix = {key: os.fspath(value) for key, value in prefix.items()}
        if self.data_root:
            if self.ann_file and not os.path.isabs(self.ann_file):
                self.ann_file = os.path.join(self.data_root, self.ann_file)
            for key, value in self.data_prefix.items():
                if not os.path.isabs(value):
                    self.data_prefix[key] = os.path.join(self.data_root, value)
        if self.NEEDS_ANN_FILE and not self.ann_file:
            raise ValueError(f"{name} needs ann_file: a split file listing the image stems, one a line")

        self.pipeline = Compose(pipeline)
        self.data_list: list[dict] = []
        self._bytes = np.zeros(0, np.uint8)
        self._ends = np.zeros(0, np.int64)
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()
        if test_mode and self._metainfo.get("classes") is None:
            raise ValueError(f"{name}: metainfo needs 'classes' in test mode")

    @classmethod
    def get_label_map(cls, new_classes: Sequence[str] | None = None) -> dict[int, int] | None:
        """Old label -> new label when ``new_classes`` is a different subset/order of the class's names.

        Classes left out map to 255. None when nothing changes (or the class has no names).
        """
        old_classes = cls.METAINFO.get("classes")
        if new_classes is None or old_classes is None or list(new_classes) == list(old_classes):
            return None
        unknown = [c for c in new_classes if c not in old_classes]
        if unknown:
            raise ValueError(f"{cls.__name__}: classes {unknown} are not among its classes "
                             f"{list(old_classes)}")
        new_classes = list(new_classes)
        return {i: new_classes.index(c) if c in new_classes else 255 for i, c in enumerate(old_classes)}

    def _palette(self) -> list[list[int]]:
        """The palette matching the classes: given, the label-mapped subset, or random (seed 42) if none."""
        palette = self._metainfo.get("palette") or []
        classes = self._metainfo.get("classes") or ()
        if len(palette) == len(classes):
            return palette
        if not palette:
            return np.random.RandomState(42).randint(0, 255, size=(len(classes), 3)).tolist()
        if len(palette) >= len(classes) and self.label_map is not None:
            kept = sorted((new, old) for old, new in self.label_map.items() if new != 255)
            return [palette[old] for _, old in kept]
        raise ValueError(f"{type(self).__name__}: {len(palette)} palette colors for {len(classes)} classes")

    @property
    def metainfo(self) -> dict:
        """A copy of ``classes``, ``palette``, ``label_map`` and ``reduce_zero_label``."""
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        """List the samples (once): load, keep ``indices``, serialize."""
        if self._fully_initialized:
            return
        data_list = self.load_data_list()
        if self.indices is not None:
            data_list = self._subset(data_list, self.indices)
        if self.serialize_data:
            chunks = [np.frombuffer(pickle.dumps(info, protocol=4), dtype=np.uint8) for info in data_list]
            self._ends = np.cumsum([len(c) for c in chunks], dtype=np.int64)
            self._bytes = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
            self.data_list = []
        else:
            self.data_list = data_list
        self._fully_initialized = True

    @staticmethod
    def _subset(data_list: list[dict], indices: int | Sequence[int]) -> list[dict]:
        if isinstance(indices, int):
            return data_list[:indices] if indices >= 0 else data_list[indices:]
        return [data_list[i] for i in indices]

    def _sample(self, img_path: str, seg_map_path: str | None) -> dict:
        info: dict[str, Any] = {"img_path": img_path}
        if seg_map_path is not None:
            info["seg_map_path"] = seg_map_path
        info.update(label_map=self.label_map, reduce_zero_label=self.reduce_zero_label, seg_fields=[])
        return info

    def load_data_list(self) -> list[dict]:
        """The samples' info dicts, from the split file or a folder scan; a wrong layout raises, naming
        the folder or file and what was expected there."""
        name = type(self).__name__
        img_dir = self.data_prefix.get("img_path")
        ann_dir = self.data_prefix.get("seg_map_path")
        if img_dir is None:
            raise ValueError(f"{name}: data_prefix needs 'img_path' (the image folder)")
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(f"{name}: image folder {img_dir!r} does not exist "
                                    f"(expected images ending in {self.img_suffix!r} there)")
        if ann_dir is not None and not os.path.isdir(ann_dir):
            raise FileNotFoundError(f"{name}: label map folder {ann_dir!r} does not exist "
                                    f"(expected label maps ending in {self.seg_map_suffix!r} there)")
        from_split = bool(self.ann_file) and not os.path.isdir(self.ann_file)
        if from_split:
            if not os.path.isfile(self.ann_file):
                raise FileNotFoundError(f"{name}: split file {self.ann_file!r} does not exist")
            stems = read_split_file(self.ann_file)
            if not stems:
                raise ValueError(f"{name}: split file {self.ann_file!r} lists no images")
        else:
            found = scan_files(img_dir, self.img_suffix)
            if not found:
                raise FileNotFoundError(f"{name}: no images ending in {self.img_suffix!r} found under "
                                        f"{img_dir!r}")
            stems = [path[: len(path) - len(self.img_suffix)] for path in found]
        data_list = [
            self._sample(os.path.join(img_dir, stem + self.img_suffix),
                         None if ann_dir is None else os.path.join(ann_dir, stem + self.seg_map_suffix))
            for stem in stems
        ]
        if from_split:
            self._check_exist([info["img_path"] for info in data_list], "image", img_dir, self.img_suffix)
        else:
            data_list.sort(key=lambda info: info["img_path"])
        if ann_dir is not None:
            self._check_exist([info["seg_map_path"] for info in data_list], "label map", ann_dir,
                              self.seg_map_suffix)
            if not from_split:
                self._warn_orphans(data_list, ann_dir)
        return data_list

    def labels_without_images(self, data_list: list[dict] | None = None) -> list[str]:
        """Label maps under ``seg_map_path`` (ending in ``seg_map_suffix``) that no listed image pairs with.

        Only meaningful for a folder scan: a split file lists a subset on purpose."""
        ann_dir = self.data_prefix.get("seg_map_path")
        if ann_dir is None or not os.path.isdir(ann_dir):
            return []
        if data_list is None:
            data_list = [self.get_data_info(i) for i in range(len(self))]
        paired = {os.path.normpath(info["seg_map_path"]) for info in data_list if "seg_map_path" in info}
        found = (os.path.join(ann_dir, path) for path in scan_files(ann_dir, self.seg_map_suffix))
        return sorted(path for path in found if os.path.normpath(path) not in paired)

    def _warn_orphans(self, data_list: list[dict], ann_dir: str) -> None:
        orphans = self.labels_without_images(data_list)
        if orphans:
            shown = ", ".join(repr(p) for p in orphans[:3]) + (", ..." if len(orphans) > 3 else "")
            warnings.warn(f"{type(self).__name__}: {len(orphans)} label maps in {ann_dir!r} have no image in "
                          f"{self.data_prefix['img_path']!r} (suffix {self.img_suffix!r}): {shown}", UserWarning,
                          stacklevel=3)

    def _check_exist(self, paths: list[str], what: str, folder: str, suffix: str) -> None:
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            shown = ", ".join(repr(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise FileNotFoundError(f"{type(self).__name__}: {len(missing)} of {len(paths)} {what} files are "
                                    f"missing in {folder!r} (suffix {suffix!r}): {shown}")

    def __len__(self) -> int:
        if not self._fully_initialized:
            self.full_init()
        return len(self._ends) if self.serialize_data else len(self.data_list)

    def get_data_info(self, idx: int) -> dict:
        """A fresh copy of sample ``idx``'s info dict, with ``sample_idx``."""
        if not self._fully_initialized:
            self.full_init()
        size = len(self)
        if not -size <= idx < size:
            raise IndexError(f"{type(self).__name__}: index {idx} out of range for {size} samples")
        idx = idx % size
        if self.serialize_data:
            start = 0 if idx == 0 else int(self._ends[idx - 1])
            info = pickle.loads(self._bytes[start:int(self._ends[idx])].tobytes())
        else:
            info = copy.deepcopy(self.data_list[idx])
        info["sample_idx"] = idx
        return info

    def __getitem__(self, idx: int) -> Any:
        """Sample ``idx`` through the pipeline; a None result draws another sample (training only).

        A failing pipeline raises ``SampleError`` naming the sample's files (the cause chained)."""
        for _ in range(self.max_refetch + 1):
            info = self.get_data_info(idx)
            # evaluation keeps MMSegmentation's rule (a value outside the classes counts in no class); training
            # stops on it
            info["label_spec"] = None if self.test_mode else self.label_spec
            data = self._run_pipeline(info)
            if data is not None:
                return data
            if self.test_mode:
                raise RuntimeError(f"{type(self).__name__}: the test pipeline returned None for sample {idx}")
            idx = int(np.random.randint(0, len(self)))
        raise RuntimeError(f"{type(self).__name__}: no valid sample after {self.max_refetch} retries; "
                           "check the image paths and the pipeline")

    def _run_pipeline(self, info: dict) -> Any:
        try:
            return self.pipeline(info)
        except Exception as error:
            name = f"{type(self).__name__} sample {info['sample_idx']}"
            if isinstance(error, DataError) and error.path:
                message = f"{name}: {error}"
            else:
                files = ", ".join(f"{key} {info[key]}" for key in ("img_path", "seg_map_path") if info.get(key))
                message = f"{name} ({files}): {type(error).__name__}: {error}"
            raise SampleError(message, getattr(error, "path", None) or info.get("img_path")) from error
