"""Pictures of label maps: palettes, colored masks, overlays, legends, palette-mode label PNGs, videos.

Arrays handed to OpenCV are BGR (as ``cv2.imread`` gives them); dataset palettes (``METAINFO['palette']``,
a checkpoint's ``dataset_meta``) are RGB, and so is a PNG's palette chunk. Each function says which.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from semseg.data.transforms.loading import PNG_SIGNATURE

# Video containers and codecs tried in order; OpenCV builds differ in which encoders they carry.
VIDEO_FORMATS = ((".mp4", "mp4v"), (".avi", "MJPG"))


def palette_for(num_classes: int, seed: int = 0) -> np.ndarray:
    """A fixed random color per class: (num_classes, 3) uint8, for classes a dataset gives no color."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Labels (H, W) -> colors (H, W, 3) uint8, class k in ``palette[k]`` (the palette's channel order);
    labels outside the palette (e.g. 255, ignored) are black."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < len(palette))
    colors = np.zeros((*labels.shape, 3), dtype=np.uint8)
    colors[valid] = palette[labels[valid]]
    return colors


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """``image * (1 - opacity) + colors * opacity`` (uint8, the image's channel order, same as the palette's);
    pixels whose label has no color keep the image."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image size {image.shape[:2]} differs from label map size {labels.shape}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    colors = colorize(labels, palette)
    blended = (image * (1 - opacity) + colors * opacity).astype(np.uint8)
    uncolored = (labels < 0) | (labels >= len(palette))
    blended[uncolored] = image[uncolored]
    return blended


def legend(names: Sequence[str], palette: np.ndarray, shares: Sequence[float] | None = None,
           row_height: int = 22) -> np.ndarray:
    """A legend image (BGR, white background): one row per class, a swatch of ``palette[i]`` (BGR) then
    ``names[i]`` and, given ``shares``, its share of the pixels in percent."""
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    # Hershey fonts draw ASCII only
    lines = [name.encode("ascii", "replace").decode() for name in names]
    if shares is not None:
        percents = [f"{100 * share:.1f}%" if share >= 0.0005 or share == 0 else "<0.1%" for share in shares]
        lines = [f"{line}  {percent}" for line, percent in zip(lines, percents, strict=True)]
    swatch = row_height - 6
    text_x = swatch + 12
    width = text_x + max([cv2.getTextSize(line, font, scale, thickness)[0][0] for line in lines] + [40]) + 8
    image = np.full((max(len(lines), 1) * row_height + 6, width, 3), 255, dtype=np.uint8)
    for row, (line, color) in enumerate(zip(lines, np.asarray(palette, dtype=np.uint8), strict=True)):
        top = 6 + row * row_height
        cv2.rectangle(image, (6, top), (6 + swatch - 1, top + swatch - 1), [int(c) for c in color], -1)
        cv2.rectangle(image, (6, top), (6 + swatch - 1, top + swatch - 1), (128, 128, 128), 1)
        cv2.putText(image, line, (text_x, top + swatch - 3), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return image


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", len(payload), kind) + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_label_png(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """A palette-mode (indexed, 8-bit) PNG of labels (H, W) in 0..255: viewers show the classes' colors
    (``palette`` (K, 3) RGB), while label readers (pillow, MMSegmentation,
    :func:`semseg.data.transforms.loading.read_label_map`) get the indices back."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"a label PNG needs a non-empty (H, W) label map, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"a palette PNG holds labels 0..255, got {labels.min()}..{labels.max()}")
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    entries = np.zeros((max(len(palette), int(labels.max()) + 1), 3), dtype=np.uint8)  # every index used
    entries[:len(palette)] = palette
    height, width = labels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # each scanline starts with filter type 0 (none)
    rows[:, 1:] = labels
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit, indexed, no interlace
    return b"".join([PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"PLTE", entries.tobytes()),
                     _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)), _chunk(b"IEND", b"")])


def write_label_png(path: str | Path, labels: np.ndarray, palette: np.ndarray) -> None:
    """Write labels (H, W) as a palette-mode PNG (``palette`` RGB); labels above 255 (more classes than an
    indexed PNG holds) go to a 16-bit grayscale PNG instead. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    if labels.size and labels.max() > 255:
        write_image(path, labels.astype(np.uint16))
    else:
        path.write_bytes(encode_label_png(labels, palette))


def write_image(path: str | Path, image: np.ndarray) -> None:
    """``cv2.imwrite`` (BGR) into a created parent folder; a failure raises naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def open_video_writer(stem: str | Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """A video writer for frames of ``size`` (width, height) at ``stem`` + the first container of
    :data:`VIDEO_FORMATS` that this OpenCV build can encode. Returns the writer and its path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, codec in VIDEO_FORMATS:
        path = stem.with_name(stem.name + suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
        path.unlink(missing_ok=True)
    formats = ", ".join(f"{codec} ({suffix})" for suffix, codec in VIDEO_FORMATS)
    raise OSError(f"this OpenCV build cannot write videos in any of {formats}: {stem}")
