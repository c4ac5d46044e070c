"""PSPNet's night-time zoo configs: their test loaders read Dark Zurich / Nighttime Driving trees in the
real layout at the 1920x1080 test scale, and they build the model of the Cityscapes config they extend."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import semseg
from semseg.config import load_config
from semseg.data.loader import build_dataloader

PARENT = "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024"
LABEL = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]] * 8 + [[18] * 15 + [255]], np.uint8)

# (night set, dataset type, image file, label file), relative to the data root, as the datasets ship.
NIGHT_SETS = [
    ("dark-zurich", "DarkZurichDataset",
     "rgb_anon/val/night/GOPR0356/GOPR0356_frame_000324_rgb_anon.png",
     "gt/val/night/GOPR0356/GOPR0356_frame_000324_gt_labelTrainIds.png"),
    ("night-driving", "NightDrivingDataset",
     "leftImg8bit/test/night/0_frame_0117_leftImg8bit.png",
     "gtCoarse_daytime_trainvaltest/test/night/0_frame_0117_gtCoarse_labelTrainIds.png"),
]


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.mark.parametrize("night,type_name,image,label", NIGHT_SETS, ids=[s[0] for s in NIGHT_SETS])
def test_test_loader_reads_the_night_set_at_1920x1080(tmp_path, night, type_name, image, label):
    rng = np.random.default_rng(0)
    write_png(tmp_path / image, rng.integers(0, 256, (*LABEL.shape, 3), dtype=np.uint8))  # 9x16 image
    write_png(tmp_path / label, LABEL)
    cfg = load_config(f"{PARENT}_{night}-1920x1080", {"test_dataloader.dataset.data_root": str(tmp_path),
                                                       "test_dataloader.num_workers": 0,
                                                       "test_dataloader.persistent_workers": False})
    assert cfg.test_dataloader.dataset.type == type_name
    assert cfg.val_dataloader.dataset.type == "CityscapesDataset"  # validation stays on Cityscapes
    loader = build_dataloader(cfg.test_dataloader.to_dict())
    assert type(loader.dataset).__name__ == type_name and len(loader.dataset) == 1
    batch = next(iter(loader))
    # Resized to 1920x1080 keeping the ratio (Cityscapes' 2048x1024 would give 1024x1820); labels stay.
    assert batch["inputs"][0].shape == (3, 1080, 1920)
    np.testing.assert_array_equal(batch["gt_sem_seg"][0].numpy(), LABEL)
    assert batch["meta"][0]["img_path"] == str(tmp_path / image)
    assert batch["meta"][0]["seg_map_path"] == str(tmp_path / label)


def test_night_configs_build_the_parent_model():
    names = [PARENT] + [f"{PARENT}_{night}-1920x1080" for night, *_ in NIGHT_SETS]
    shapes = [{key: tuple(value.shape) for key, value in semseg.init_model(name).state_dict().items()}
              for name in names]
    assert shapes[1] == shapes[0] and shapes[2] == shapes[0]
    assert "decode_head.psp_modules.0.1.conv.weight" in shapes[0]
    assert shapes[0]["decode_head.conv_seg.weight"] == (19, 512, 1, 1)
