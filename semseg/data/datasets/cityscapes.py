"""Cityscapes (and the night-time test sets scored with its classes) and the label converter.

Layout: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png``. The official release holds
``*_gtFine_labelIds.png`` and ``*_gtFine_polygons.json``; ``convert_cityscapes`` writes the
``*_labelTrainIds.png`` maps (the 19 train classes 0..18, 255 for the rest) and ``<split>.txt`` lists of
stems beside them::

    python tools/convert_cityscapes.py data/cityscapes
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from semseg.data.datasets import metainfo as meta
from semseg.data.datasets.base import BaseSegDataset, scan_files


class CityscapesDataset(BaseSegDataset):
    """Cityscapes fine annotations, 19 classes; label maps hold train ids (255 ignored)."""

    METAINFO = {"classes": meta.CITYSCAPES_CLASSES, "palette": meta.CITYSCAPES_PALETTE}
    IMG_SUFFIX = "_leftImg8bit.png"
    SEG_MAP_SUFFIX = "_gtFine_labelTrainIds.png"

    @staticmethod
    def train_id_to_label_id(train_ids: np.ndarray) -> np.ndarray:
        """Predicted trainIds (H, W) -> official label ids, the format the Cityscapes server scores."""
        return TRAIN_ID_TO_ID[train_ids.astype(np.int64)]


class DarkZurichDataset(CityscapesDataset):
    """Dark Zurich night images (``rgb_anon/val/night/<seq>/*_rgb_anon.png``,
    ``gt/.../*_gt_labelTrainIds.png``) scored with Cityscapes' classes."""

    IMG_SUFFIX = "_rgb_anon.png"
    SEG_MAP_SUFFIX = "_gt_labelTrainIds.png"


class NightDrivingDataset(CityscapesDataset):
    """Nighttime Driving test set (``leftImg8bit/test/night``, ``gtCoarse_daytime_trainvaltest/test/night``,
    ``*_gtCoarse_labelTrainIds.png``) scored with Cityscapes' classes."""

    SEG_MAP_SUFFIX = "_gtCoarse_labelTrainIds.png"


# The official Cityscapes labels (cityscapesScripts' helpers/labels.py): name -> (id, trainId). A label
# with id -1 (license plate) is never drawn; every id not listed here maps to 255.
LABELS: dict[str, tuple[int, int]] = {
    "unlabeled": (0, 255), "ego vehicle": (1, 255), "rectification border": (2, 255), "out of roi": (3, 255),
    "static": (4, 255), "dynamic": (5, 255), "ground": (6, 255), "road": (7, 0), "sidewalk": (8, 1),
    "parking": (9, 255), "rail track": (10, 255), "building": (11, 2), "wall": (12, 3), "fence": (13, 4),
    "guard rail": (14, 255), "bridge": (15, 255), "tunnel": (16, 255), "pole": (17, 5),
    "polegroup": (18, 255), "traffic light": (19, 6), "traffic sign": (20, 7), "vegetation": (21, 8),
    "terrain": (22, 9),
    "sky": (23, 10), "person": (24, 11), "rider": (25, 12), "car": (26, 13), "truck": (27, 14),
    "bus": (28, 15), "caravan": (29, 255), "trailer": (30, 255), "train": (31, 16), "motorcycle": (32, 17),
    "bicycle": (33, 18), "license plate": (-1, -1),
}

ID_TO_TRAIN_ID = np.full(256, 255, dtype=np.uint8)
TRAIN_ID_TO_ID = np.zeros(256, dtype=np.uint8)  # trainIds outside 0..18 become 0, 'unlabeled'
for _label_id, _train_id in LABELS.values():
    if _label_id >= 0:
        ID_TO_TRAIN_ID[_label_id] = _train_id
        if 0 <= _train_id < 255:
            TRAIN_ID_TO_ID[_train_id] = _label_id


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """(H, W) Cityscapes label ids -> (H, W) uint8 train ids (0..18, 255 for ignored classes)."""
    if label_ids.ndim != 2:
        raise ValueError(f"a labelIds map must have one channel, got shape {label_ids.shape}")
    if label_ids.dtype != np.uint8 and (label_ids.min() < 0 or label_ids.max() > 255):
        raise ValueError(f"label ids must lie in 0..255, got {label_ids.min()}..{label_ids.max()}")
    return ID_TO_TRAIN_ID[label_ids.astype(np.int64)]


def polygons_to_train_ids(annotation: dict, source: str = "<annotation>") -> np.ndarray:
    """Rasterize a ``*_gtFine_polygons.json`` annotation to (imgHeight, imgWidth) uint8 train ids, pixel for
    pixel as cityscapesScripts' ``json2labelImg`` does (the benchmark's labels are defined by its
    rasterization, Pillow's ``ImageDraw.polygon``; OpenCV's ``fillPoly`` differs on about 1 % of the pixels,
    along slanted edges).

    Objects are drawn in file order (later ones on top) on 255 ("unlabeled"). ``<name>group`` falls back to
    ``<name>``; deleted objects and labels with a negative id (the license plate) are skipped.
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError as error:
        raise ImportError("rasterizing Cityscapes polygons as the benchmark's tool does needs Pillow: "
                          "pip install 'semseg[cityscapes]' (or use --source labelIds)") from error
    height, width = int(annotation["imgHeight"]), int(annotation["imgWidth"])
    image = Image.new("L", (width, height), LABELS["unlabeled"][1])
    draw = ImageDraw.Draw(image)
    for obj in annotation.get("objects", []):
        if obj.get("deleted"):
            continue
        name = obj["label"]
        if name not in LABELS and name.endswith("group"):
            name = name[: -len("group")]
        if name not in LABELS:
            raise ValueError(f"{source}: unknown Cityscapes label {obj['label']!r}")
        label_id, train_id = LABELS[name]
        if label_id < 0:
            continue
        draw.polygon([(x, y) for x, y in obj["polygon"]], fill=int(train_id))
    return np.array(image, dtype=np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"cannot encode {path}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)


def convert_cityscapes(data_root: str | os.PathLike, gt_dir: str = "gtFine", source: str = "auto",
                       splits: Sequence[str] = ("train", "val", "test"),
                       overwrite: bool = False) -> list[Path]:
    """Write ``*_labelTrainIds.png`` beside every ``gt_dir`` annotation and ``<data_root>/<split>.txt``.

    ``source``: ``labelIds`` maps the official ``*_labelIds.png`` (exactly the official train ids),
    ``polygons`` rasterizes ``*_polygons.json``, ``auto`` takes the PNG where there is one. Existing outputs
    are kept unless ``overwrite``. Returns the label maps written.
    """
    if source not in ("auto", "labelIds", "polygons"):
        raise ValueError(f"source must be 'auto', 'labelIds' or 'polygons', got {source!r}")
    root = Path(data_root)
    gt_root = root / gt_dir
    if not gt_root.is_dir():
        raise FileNotFoundError(f"Cityscapes annotation folder {gt_root} does not exist "
                                f"(expected {gt_dir}/<split>/<city>/*_{gt_dir}_polygons.json "
                                "or *_labelIds.png)")
    stems = {p[: -len("_polygons.json")] for p in scan_files(str(gt_root), "_polygons.json")}
    id_stems = {p[: -len("_labelIds.png")] for p in scan_files(str(gt_root), "_labelIds.png")}
    if source == "labelIds":
        stems = id_stems
    elif source == "auto":
        stems |= id_stems
    if not stems:
        raise FileNotFoundError(f"no *_polygons.json or *_labelIds.png annotations found under {gt_root}")
    written = []
    for stem in sorted(stems):
        out = gt_root / f"{stem}_labelTrainIds.png"
        if out.exists() and not overwrite:
            continue
        if stem in id_stems and source != "polygons":
            path = gt_root / f"{stem}_labelIds.png"
            label_ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if label_ids is None:
                raise ValueError(f"cannot read {path}")
            train_ids = label_ids_to_train_ids(label_ids)
        else:
            path = gt_root / f"{stem}_polygons.json"
            train_ids = polygons_to_train_ids(json.loads(path.read_text()), str(path))
        _write_png(out, train_ids)
        written.append(out)
    suffix = f"_{gt_dir}"
    for split in splits:
        split_stems = sorted(s[len(split) + 1:] for s in stems if s.startswith(split + os.sep))
        if split_stems:
            lines = [s[: -len(suffix)] if s.endswith(suffix) else s for s in split_stems]
            (root / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
    return written

