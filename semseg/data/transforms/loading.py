"""Reading images and label maps from files: ``img`` (H, W, 3) uint8 BGR and ``gt_seg_map`` (H, W) uint8.

Images decode with cv2. Label maps decode as MMSegmentation reads them with pillow's ``unchanged`` mode:
a paletted PNG (Pascal VOC's ``SegmentationClass``) gives its palette indices, not its colors, and a
1-bit grayscale PNG gives 0/1. cv2 expands palettes to colors, so a paletted PNG is decoded through a
rewritten copy whose palette maps index i to the gray color (i, i, i).

A file that cannot be used raises ``DataError`` (a ``ValueError``) naming it and the problem: unreadable,
corrupt or truncated, a label map of the wrong size, with several channels (a color-coded map where class
indices are expected) or with values that are neither a class nor the ignore index. A missing file raises
``FileNotFoundError``. Nothing else escapes from the decoders.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

IMREAD_FLAGS = {
    "color": cv2.IMREAD_COLOR,
    "grayscale": cv2.IMREAD_GRAYSCALE,
    "unchanged": cv2.IMREAD_UNCHANGED,
    "color_ignore_orientation": cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR,
    "grayscale_ignore_orientation": cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_GRAYSCALE,
}


class DataError(ValueError):
    """A data file that cannot be used as it is; the message names the file, the problem and the fix.

    ``path`` is the file; ``kind`` one of ``unreadable``, ``size``, ``channels``, ``values``; ``values``
    the offending label values (kind ``values``).
    """

    def __init__(self, message: str, path: str | Path | None = None, kind: str = "unreadable",
                 values: Sequence[int] = ()):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.kind = kind
        self.values = tuple(values)


@dataclass(frozen=True)
class LabelSpec:
    """What a dataset's label maps may hold: class indices ``0..num_classes-1`` and ``ignore_index``;
    ``palette`` (RGB per class) recognizes color-coded label maps."""

    num_classes: int
    ignore_index: int = 255
    palette: tuple[tuple[int, int, int], ...] | None = None


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}", path) from None


def _decode(data: bytes, flag: int, path: str | Path) -> np.ndarray:
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag) if data else None
    except cv2.error as error:  # e.g. a header declaring more pixels than cv2 accepts
        reason = str(error).strip().splitlines()[-1]
        raise DataError(f"cannot decode image {path} (corrupt or too large: {reason})", path) from None
    if image is None:
        raise DataError(f"cannot decode image {path} (corrupt, truncated or not an image)", path)
    return image

def read_image(path: str | Path, flag: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Read an image file with cv2; a missing, unreadable or truncated file raises naming the path."""
    return _decode(_read_bytes(path), flag, path)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG file, in order."""
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", len(payload), kind) + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _gray_palette_png(chunks: list[tuple[bytes, bytes]], bit_depth: int) -> bytes:
    """The PNG with its palette replaced by index i -> (i, i, i) and its ancillary chunks (transparency,
    background, histogram, gamma) dropped, so that decoding it to color gives the indices in every channel."""
    gray = bytes(np.repeat(np.arange(2 ** bit_depth, dtype=np.uint8), 3))
    out = [PNG_SIGNATURE]
    for kind, payload in chunks:
        if kind == b"PLTE":
            out.append(_png_chunk(b"PLTE", gray))
        elif kind in (b"IHDR", b"IDAT", b"IEND"):
            out.append(_png_chunk(kind, payload))
    return b"".join(out)


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a label map as pillow's ``unchanged`` mode does (MMSegmentation's default for annotations).

    Returns (H, W) or (H, W, C) in the file's dtype. Paletted PNGs give palette indices (uint8), 1-bit
    grayscale PNGs give 0/1; every other file decodes with ``cv2.IMREAD_UNCHANGED``.
    """
    data = _read_bytes(path)
    if data.startswith(PNG_SIGNATURE):
        chunks = _png_chunks(data)
        if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
            raise DataError(f"cannot decode image {path} (corrupt PNG header)", path)
        bit_depth, color_type = chunks[0][1][8], chunks[0][1][9]
        if color_type == 3:  # paletted
            if bit_depth not in (1, 2, 4, 8):
                raise DataError(f"cannot decode image {path} (corrupt PNG header: palette bit depth "
                                f"{bit_depth})", path)
            return _decode(_gray_palette_png(chunks, bit_depth), cv2.IMREAD_COLOR, path)[:, :, 0].copy()
        if color_type == 0 and bit_depth == 1:  # cv2 expands 1-bit gray to 0/255, pillow gives 0/1
            return (_decode(data, cv2.IMREAD_UNCHANGED, path) > 0).astype(np.uint8)
    return _decode(data, cv2.IMREAD_UNCHANGED, path)


def _color_label_fix(label: np.ndarray, spec: LabelSpec | None) -> str:
    """Why an (H, W, C) label map is not an index map, and the fix."""
    pixels = label.reshape(-1, label.shape[2])
    if label.shape[2] >= 3 and (pixels[:, :3] == pixels[:, :1]).all():
        return ("its color channels are equal: save it with one channel (cv2.imwrite(path, label[:, :, 0])) "
                "or as a paletted PNG")
    if label.dtype != np.uint8 or label.shape[2] not in (3, 4):
        return "label maps hold one class index per pixel: save it as a single-channel or paletted PNG"
    bgr = pixels[:, :3].astype(np.uint32)
    colors = np.unique(bgr[:, 2] << 16 | bgr[:, 1] << 8 | bgr[:, 0])  # as RGB codes
    known = np.array([r << 16 | g << 8 | b for r, g, b in spec.palette], np.uint32) if spec and spec.palette else None
    if known is not None and np.isin(colors, known).mean() >= 0.5:
        return (f"it is color-coded ({len(colors)} colors, {int(np.isin(colors, known).sum())} of them the "
                "dataset's palette): convert it to class indices with semseg.data.check.palette_to_index "
                "and save one channel")
    return (f"it holds {len(colors)} colors, not the dataset's palette: label maps hold one class index per pixel "
            "(a single-channel or paletted PNG); convert colors to indices with semseg.data.check.palette_to_index")


def to_index_map(label: np.ndarray, path: str | Path, spec: LabelSpec | None = None) -> np.ndarray:
    """A decoded label map as (H, W) uint8 class indices; several channels or values above 255 raise
    ``DataError`` with the fix (a color-coded map needs a palette-to-index conversion)."""
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[:, :, 0]
    if label.ndim != 2:
        raise DataError(f"label map {path} must have one channel (class indices), got shape {label.shape}: "
                        f"{_color_label_fix(label, spec)}", path, "channels")
    if label.dtype != np.uint8:
        top = label.max(initial=0)
        if top > 255 or label.min(initial=0) < 0 or not np.array_equal(label, np.round(label)):
            raise DataError(f"label map {path} ({label.dtype}) holds values outside 0..255 (up to {top}); class "
                            "indices must fit 8 bits", path, "values", [int(top)])
    return label.astype(np.uint8)


def remap_labels(label: np.ndarray, reduce_zero_label: bool, label_map: dict[int, int] | None) -> np.ndarray:
    """ADE20K's ``reduce_zero_label`` (0 -> 255, v -> v - 1, 255 stays), then ``label_map`` (all at once)."""
    if reduce_zero_label:
        label = np.where(label == 0, 255, label - 1).astype(np.uint8)
        label[label == 254] = 255
    if label_map:
        lookup = np.arange(256, dtype=np.uint8)
        for old, new in label_map.items():
            if 0 <= old < 256:
                lookup[old] = new
        label = lookup[label]
    return label


def bad_label_values(counts: np.ndarray, spec: LabelSpec) -> list[int]:
    """The values of a 256-bin label histogram that are neither a class nor the ignore index."""
    present = np.flatnonzero(counts)
    return [int(v) for v in present if v >= spec.num_classes and v != spec.ignore_index]


def bad_values_message(where: str, values: Sequence[int], spec: LabelSpec, reduce_zero_label: bool) -> str:
    """One line: which values are wrong, what is allowed, and the likely fix."""
    shown = ", ".join(map(str, values[:12])) + (", ..." if len(values) > 12 else "")
    message = (f"{where} has values [{shown}] outside the {spec.num_classes} classes (0..{spec.num_classes - 1}) "
               f"and ignore_index {spec.ignore_index}")
    if not reduce_zero_label and list(values) == [spec.num_classes]:
        return message + ("; if 0 means 'unlabeled' and the classes are 1..num_classes, set the dataset's "
                          "reduce_zero_label=True")
    return message + ("; check that the label maps are this dataset's class indices (converted, e.g. "
                      "Cityscapes *_labelTrainIds.png) and that metainfo classes / num_classes match them")


class LoadImageFromFile:
    """``results['img_path']`` -> ``img`` (H, W, 3) uint8 BGR (float32 with ``to_float32``), ``ori_shape``,
    ``img_shape``. Decoding is cv2's whatever ``imdecode_backend`` says; with ``ignore_empty`` an unreadable
    file gives ``None`` (Compose then stops and returns ``None``)."""

    def __init__(self, to_float32: bool = False, color_type: str = "color", imdecode_backend: str = "cv2",
                 backend_args: dict | None = None, ignore_empty: bool = False):
        if color_type not in IMREAD_FLAGS:
            raise ValueError(f"color_type must be one of {sorted(IMREAD_FLAGS)}, got {color_type!r}")
        self.to_float32 = to_float32
        self.flag = IMREAD_FLAGS[color_type]
        self.ignore_empty = ignore_empty

    def __call__(self, results: dict) -> dict | None:
        try:
            image = read_image(results["img_path"], self.flag)
        except (FileNotFoundError, ValueError):
            if self.ignore_empty:
                return None
            raise
        if self.to_float32:
            image = image.astype(np.float32)
        results.update(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2])
        return results


class LoadImageFromNDArray(LoadImageFromFile):
    """``results['img']`` already holds an (H, W, 3) array; record its shapes (``img_path`` None)."""

    def __call__(self, results: dict) -> dict:
        image = results["img"]
        if self.to_float32:
            image = image.astype(np.float32)
        results.update(img=image, img_path=None, img_shape=image.shape[:2], ori_shape=image.shape[:2])
        return results


class LoadAnnotations:
    """``results['seg_map_path']`` -> ``gt_seg_map`` (H, W) uint8, appended to ``seg_fields``.

    ``reduce_zero_label`` (ADE20K's convention) maps 0 to 255 and v to v - 1 for the others, with 255
    staying 255; ``None`` takes the dataset's ``results['reduce_zero_label']`` (default False), and a value
    that contradicts the dataset's is an error. Then ``results['label_map']`` (old -> new, all at once)
    is applied. ``DataError`` names the file for a label map whose size differs from the image's
    (``ori_shape``), one with several channels, and, when the dataset puts its ``LabelSpec`` in
    ``results['label_spec']``, one holding values that are neither a class nor the ignore index.
    """

    def __init__(self, reduce_zero_label: bool | None = None, imdecode_backend: str = "pillow",
                 backend_args: dict | None = None):
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, results: dict) -> dict:
        path = results["seg_map_path"]
        spec = results.get("label_spec")
        label = to_index_map(read_label_map(path), path, spec)
        if "ori_shape" in results and tuple(label.shape) != tuple(results["ori_shape"][:2]):
            raise DataError(f"label map {path} has size {label.shape[0]}x{label.shape[1]} (HxW) but its image "
                            f"{results.get('img_path')} has size {results['ori_shape'][0]}x{results['ori_shape'][1]}",
                            path, "size")
        reduce = self.reduce_zero_label
        dataset_reduce = results.get("reduce_zero_label")
        if reduce is None:
            reduce = bool(dataset_reduce)
        elif dataset_reduce is not None and bool(dataset_reduce) != bool(reduce):
            raise ValueError(f"LoadAnnotations(reduce_zero_label={reduce}) contradicts the dataset's "
                             f"reduce_zero_label={dataset_reduce}; set it on the dataset only")
        label = remap_labels(label, reduce, results.get("label_map"))
        if spec is not None:
            bad = bad_label_values(np.bincount(label.ravel(), minlength=256), spec)
            if bad:
                raise DataError(bad_values_message(f"label map {path}", bad, spec, reduce), path, "values", bad)
        results["gt_seg_map"] = label
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results
