"""Cityscapes polygons -> labelTrainIds, pixel for pixel as the benchmark's own converter (cityscapesScripts'
json2labelImg, installed by `make test`) writes them, on random polygons with slanted edges."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.preparation.json2labelImg import json2labelImg

from semseg.data.datasets.cityscapes import LABELS, polygons_to_train_ids

NAMES = ["road", "sidewalk", "building", "car", "cargroup", "person", "persongroup", "sky", "vegetation",
         "license plate", "pole", "traffic sign", "rectification border", "ego vehicle"]


def random_annotation(seed: int, height: int = 120, width: int = 160) -> dict:
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(25):
        center = rng.uniform([0, 0], [width, height])
        count = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = rng.uniform(3, 45, count)
        points = center + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        polygon = np.clip(np.round(points), [-5, -5], [width + 5, height + 5]).astype(int).tolist()
        objects.append({"label": str(rng.choice(NAMES)), "polygon": polygon,
                        **({"deleted": 1} if rng.random() < 0.1 else {})})
    return {"imgHeight": height, "imgWidth": width, "objects": objects}


def official(annotation: dict, tmp_path: Path) -> np.ndarray:
    source, target = tmp_path / "a_gtFine_polygons.json", tmp_path / "a_gtFine_labelTrainIds.png"
    source.write_text(json.dumps(annotation))
    json2labelImg(str(source), str(target), "trainIds")
    return cv2.imread(str(target), cv2.IMREAD_UNCHANGED)


def test_polygons_equal_the_official_converter(tmp_path: Path) -> None:
    slanted_edge_pixels = 0
    for seed in range(6):
        annotation = random_annotation(seed)
        expected = official(annotation, tmp_path)
        ours = polygons_to_train_ids(annotation)
        assert ours.dtype == np.uint8 and ours.shape == expected.shape == (120, 160)
        assert np.array_equal(ours, expected), f"seed {seed}: {(ours != expected).sum()} pixels differ"
        assert len(np.unique(expected)) > 5
        # OpenCV's fillPoly (the earlier rasterizer) fills slanted edges differently: the test sees them
        with_cv2 = np.full_like(expected, LABELS["unlabeled"][1])
        for obj in annotation["objects"]:
            name = obj["label"].removesuffix("group") if obj["label"] not in LABELS else obj["label"]
            if not obj.get("deleted") and LABELS[name][0] >= 0:
                cv2.fillPoly(with_cv2, [np.asarray(obj["polygon"], np.int32)], int(LABELS[name][1]))
        slanted_edge_pixels += int((with_cv2 != expected).sum())
    assert slanted_edge_pixels > 0
