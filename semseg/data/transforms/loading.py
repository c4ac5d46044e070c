"""Reading images and label maps from files: ``img`` (H, W, 3) uint8 BGR and ``gt_seg_map`` (H, W) uint8.

Images decode with cv2. Label maps decode as MMSegmentation reads them with pillow's ``unchanged`` mode:
a paletted PNG (Pascal VOC's ``SegmentationClass``) gives its palette indices, not its colors, and a
1-bit grayscale PNG gives 0/1. cv2 expands palettes to colors, so a paletted PNG is decoded through a
rewritten copy whose palette maps index i to the gray color (i, i, i).
"""

from __future__ import annotations

import struct
import zlib
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


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return path.read_bytes()


def _decode(data: bytes, flag: int, path: str | Path) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag) if data else None
    if image is None:
        raise ValueError(f"cannot decode image {path} (corrupt, truncated or not an image)")
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
            raise ValueError(f"cannot decode image {path} (corrupt PNG header)")
        bit_depth, color_type = chunks[0][1][8], chunks[0][1][9]
        if color_type == 3:  # paletted
            return _decode(_gray_palette_png(chunks, bit_depth), cv2.IMREAD_COLOR, path)[:, :, 0].copy()
        if color_type == 0 and bit_depth == 1:  # cv2 expands 1-bit gray to 0/255, pillow gives 0/1
            return (_decode(data, cv2.IMREAD_UNCHANGED, path) > 0).astype(np.uint8)
    return _decode(data, cv2.IMREAD_UNCHANGED, path)


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
    is applied. A label map whose size differs from the image's (``ori_shape``) is an error naming both.
    """

    def __init__(self, reduce_zero_label: bool | None = None, imdecode_backend: str = "pillow",
                 backend_args: dict | None = None):
        self.reduce_zero_label = reduce_zero_label

    def __call__(self, results: dict) -> dict:
        path = results["seg_map_path"]
        label = read_label_map(path)
        if label.ndim == 3 and label.shape[2] == 1:
            label = label[:, :, 0]
        if label.ndim != 2:
            raise ValueError(f"label map {path} must have one channel, got shape {label.shape}")
        label = label.astype(np.uint8)
        if "ori_shape" in results and tuple(label.shape) != tuple(results["ori_shape"][:2]):
            raise ValueError(f"label map {path} has size {label.shape[0]}x{label.shape[1]} (HxW) but its image "
                             f"{results.get('img_path')} has size {results['ori_shape'][0]}x{results['ori_shape'][1]}")
        reduce = self.reduce_zero_label
        dataset_reduce = results.get("reduce_zero_label")
        if reduce is None:
            reduce = bool(dataset_reduce)
        elif dataset_reduce is not None and bool(dataset_reduce) != bool(reduce):
            raise ValueError(f"LoadAnnotations(reduce_zero_label={reduce}) contradicts the dataset's "
                             f"reduce_zero_label={dataset_reduce}; set it on the dataset only")
        if reduce:
            label = np.where(label == 0, 255, label - 1).astype(np.uint8)
            label[label == 254] = 255
        if results.get("label_map"):
            mapped = label.copy()
            for old, new in results["label_map"].items():
                mapped[label == old] = new
            label = mapped
        results["gt_seg_map"] = label
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results
