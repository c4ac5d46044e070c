"""The synthetic dataset: deterministic by seed, split-dependent, every class present and separable, served
through a config pipeline from memory, and written to disk in the folder layout that reads back the same."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from semseg.build import build
from semseg.data.datasets import BaseSegDataset, SyntheticDataset, generate_sample, write_synthetic_dataset
from semseg.data.datasets.synthetic import synthetic_metainfo

FILE_PIPELINE = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}, {"type": "PackSegInputs"}]


def test_generation_is_deterministic_by_seed_and_split():
    image, label = generate_sample(3, (40, 56), num_classes=4, seed=7)
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert label.shape == (40, 56) and label.dtype == np.uint8
    again_image, again_label = generate_sample(3, (40, 56), num_classes=4, seed=7)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    for other in (generate_sample(3, (40, 56), 4, seed=8), generate_sample(3, (40, 56), 4, 7, split="val"),
                  generate_sample(4, (40, 56), 4, seed=7)):
        assert not np.array_equal(label, other[1])
    with pytest.raises(ValueError, match="split"):
        generate_sample(0, split="training")


def test_every_class_appears_and_classes_are_separable_by_color():
    num_classes = 6
    train = [generate_sample(i, (48, 48), num_classes, seed=0) for i in range(12)]
    for _, label in train:
        assert label.max() < num_classes
        assert len(np.unique(label)) >= num_classes - 1  # one shape per class; overlaps may hide one
    assert set(np.unique(np.concatenate([lab.ravel() for _, lab in train]))) == set(range(num_classes))
    # Per-class mean colors (of 5x5-blurred images, averaging the stripes out) classify held-out pixels.
    features = np.concatenate([cv2.blur(img.astype(np.float32), (5, 5)).reshape(-1, 3) for img, _ in train])
    labels = np.concatenate([lab.ravel() for _, lab in train])
    means = np.stack([features[labels == k].mean(0) for k in range(num_classes)])
    val = [generate_sample(i, (48, 48), num_classes, seed=0, split="val") for i in range(4)]
    correct = total = 0
    for image, label in val:
        pixels = cv2.blur(image.astype(np.float32), (5, 5)).reshape(-1, 3)
        predicted = np.argmin(((pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)
        correct += int((predicted == label.ravel()).sum())
        total += label.size
    assert correct / total > 0.85


def test_dataset_serves_through_a_file_pipeline():
    dataset = build("dataset", {"type": "SyntheticDataset", "num_samples": 5, "img_size": (32, 40),
                                "num_classes": 3, "seed": 1, "split": "val", "pipeline": FILE_PIPELINE})
    assert isinstance(dataset, SyntheticDataset) and len(dataset) == 5
    sample = dataset[2]
    image, label = generate_sample(2, (32, 40), 3, seed=1, split="val")
    assert torch.equal(sample["inputs"], torch.from_numpy(image).permute(2, 0, 1))
    assert torch.equal(sample["gt_sem_seg"], torch.from_numpy(label).long())
    assert sample["meta"]["ori_shape"] == (32, 40)
    assert torch.equal(dataset[-3]["gt_sem_seg"], sample["gt_sem_seg"])
    with pytest.raises(IndexError):
        dataset[5]
    meta = dataset.metainfo
    assert meta["classes"] == ("background", "shape_1", "shape_2")
    assert len(meta["palette"]) == 3 and meta["palette"][0] == [110, 110, 110]
    assert meta["reduce_zero_label"] is False and meta["label_map"] is None


def test_training_pipeline_runs_on_synthetic_samples():
    pipeline = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"},
                {"type": "RandomResize", "scale": (64, 32), "ratio_range": (1.0, 2.0), "keep_ratio": True},
                {"type": "RandomCrop", "crop_size": (24, 24), "cat_max_ratio": 0.75},
                {"type": "RandomFlip", "prob": 0.5}, {"type": "PhotoMetricDistortion"},
                {"type": "PackSegInputs"}]
    dataset = SyntheticDataset(num_samples=4, img_size=(32, 32), pipeline=pipeline)
    np.random.seed(0)
    for i in range(4):  # resized to at least 32x32, so the crop is always full size
        sample = dataset[i]
        assert sample["inputs"].shape == (3, 24, 24) and sample["gt_sem_seg"].shape == (24, 24)
        assert int(sample["gt_sem_seg"].max()) < 5


def test_written_folder_dataset_reads_back_identical_arrays(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", num_train=3, num_val=2, img_size=(24, 30), num_classes=4,
                                   seed=5)
    assert sorted(p.name for p in (root / "img_dir" / "val").iterdir()) == ["00000.png", "00001.png"]
    for split, count in (("train", 3), ("val", 2)):
        folder = BaseSegDataset(data_root=root, img_suffix=".png", pipeline=FILE_PIPELINE,
                                data_prefix={"img_path": f"img_dir/{split}",
                                             "seg_map_path": f"ann_dir/{split}"},
                                metainfo={"classes": str(root / "classes.txt")})
        memory = SyntheticDataset(num_samples=count, img_size=(24, 30), num_classes=4, seed=5, split=split,
                                  pipeline=FILE_PIPELINE)
        assert len(folder) == count
        assert folder.metainfo["classes"] == synthetic_metainfo(4)["classes"]
        for i in range(count):
            assert torch.equal(folder[i]["inputs"], memory[i]["inputs"])
            assert torch.equal(folder[i]["gt_sem_seg"], memory[i]["gt_sem_seg"])
