"""Datasets vs MMSegmentation 1.2.2 on the same fixture trees: the same files in the same order (the same
``get_data_info`` dicts), the same loaded labels, and the same metainfo (classes, palette, label_map)
for every dataset class both have."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from oracle import install_ext_stub, require_oracle

from semseg.build import DATASETS, build, lookup

install_ext_stub()

LOAD = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]
OURS_ONLY = {"SyntheticDataset", "RepeatDataset", "ConcatDataset"}


def oracle_datasets():
    require_oracle()
    import mmengine.dataset
    import mmseg.datasets
    from mmengine.registry import init_default_scope
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    return mmseg.datasets, mmengine.dataset


def write_pair(root, img_path, seg_path, value):
    label = (np.arange(12, dtype=np.uint8).reshape(3, 4) + value) % 7
    label[0, 0] = 0
    for path, array in ((root / img_path, np.full((3, 4, 3), value, np.uint8)), (root / seg_path, label)):
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), array)


def assert_same_samples(ours, theirs):
    assert len(ours) == len(theirs)
    for i in range(len(ours)):
        assert ours.get_data_info(i) == theirs.get_data_info(i)
    for i in range(len(ours)):
        np.testing.assert_array_equal(ours[i]["gt_seg_map"], theirs[i]["gt_seg_map"])


# Stems chosen so that sorting stems and sorting paths differ ("a-1_leftImg8bit" < "a_leftImg8bit").
CITYSCAPES_STEMS = ["zurich/zurich_000000_000001", "aachen/a-1", "aachen/a", "aachen/a_b", "bochum/b"]


@pytest.mark.parametrize("metainfo", [None, {"classes": ("car", "road", "sky")}])
def test_cityscapes_layout(tmp_path, metainfo):
    mmseg_datasets, _ = oracle_datasets()
    for i, stem in enumerate(CITYSCAPES_STEMS):
        write_pair(tmp_path, f"leftImg8bit/train/{stem}_leftImg8bit.png",
                   f"gtFine/train/{stem}_gtFine_labelTrainIds.png", i)
    (tmp_path / "leftImg8bit/train/aachen/.hidden_leftImg8bit.png").write_bytes(b"")
    kwargs = {"data_root": str(tmp_path), "pipeline": LOAD, "metainfo": metainfo,
              "data_prefix": {"img_path": "leftImg8bit/train", "seg_map_path": "gtFine/train"}}
    ours = build("dataset", {"type": "CityscapesDataset", **kwargs})
    theirs = mmseg_datasets.CityscapesDataset(**kwargs)
    assert_same_samples(ours, theirs)
    assert_same_metainfo(ours.metainfo, theirs.metainfo)


def test_ade20k_layout_reduces_zero_label(tmp_path):
    mmseg_datasets, _ = oracle_datasets()
    for i, stem in enumerate(["ADE_val_00000002", "ADE_val_00000001", "sub/ADE_val_00000010"]):
        write_pair(tmp_path, f"images/validation/{stem}.jpg", f"annotations/validation/{stem}.png", i)
    kwargs = {"data_root": str(tmp_path), "pipeline": LOAD, "serialize_data": False,
              "data_prefix": {"img_path": "images/validation", "seg_map_path": "annotations/validation"}}
    ours = build("dataset", {"type": "ADE20KDataset", **kwargs})
    theirs = mmseg_datasets.ADE20KDataset(**kwargs)
    assert_same_samples(ours, theirs)
    assert ours[0]["gt_seg_map"][0, 0] == 255


def test_voc_split_files_and_concat(tmp_path):
    mmseg_datasets, mmengine_dataset = oracle_datasets()
    stems = ["2008_000002", "2007_000032", "2007_000039", "2011_003276"]
    for i, stem in enumerate(stems):
        write_pair(tmp_path, f"JPEGImages/{stem}.jpg", f"SegmentationClass/{stem}.png", i)
        write_pair(tmp_path, f"JPEGImages/{stem}.jpg", f"SegmentationClassAug/{stem}.png", i + 3)
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("2008_000002\n2007_000039\n")
    (tmp_path / "ImageSets/Segmentation/aug.txt").write_text("2011_003276\n2007_000032\n2008_000002\n")
    train = {"type": "PascalVOCDataset", "data_root": str(tmp_path), "pipeline": LOAD,
             "data_prefix": {"img_path": "JPEGImages", "seg_map_path": "SegmentationClass"},
             "ann_file": "ImageSets/Segmentation/train.txt"}
    aug = {**train, "data_prefix": {"img_path": "JPEGImages", "seg_map_path": "SegmentationClassAug"},
           "ann_file": "ImageSets/Segmentation/aug.txt"}
    for cfg in (train, aug):
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        assert_same_samples(build("dataset", cfg), mmseg_datasets.PascalVOCDataset(**kwargs))
    ours = build("dataset", {"type": "ConcatDataset", "datasets": [train, aug]})
    theirs = mmengine_dataset.ConcatDataset([mmseg_datasets.PascalVOCDataset(**{k: v for k, v in cfg.items()
                                                                                if k != "type"})
                                             for cfg in (train, aug)])
    assert_same_samples(ours, theirs)


def assert_same_metainfo(ours: dict, theirs: dict) -> None:
    assert tuple(ours.get("classes") or ()) == tuple(theirs.get("classes") or ())
    assert [list(c) for c in ours["palette"]] == [list(c) for c in theirs["palette"]]
    assert ours["label_map"] == theirs["label_map"]
    assert ours["reduce_zero_label"] == theirs["reduce_zero_label"]


@pytest.mark.parametrize("type_name", sorted(set(DATASETS) - OURS_ONLY))
def test_metainfo_matches_for_every_dataset_class(tmp_path, type_name):
    mmseg_datasets, _ = oracle_datasets()
    (tmp_path / "img").mkdir()
    (tmp_path / "split.txt").write_text("x\n")
    kwargs = {"data_root": str(tmp_path), "data_prefix": {"img_path": "img", "seg_map_path": "img"},
              "ann_file": "split.txt", "lazy_init": True}
    ours = lookup("dataset", type_name)(**kwargs)
    theirs = getattr(mmseg_datasets, type_name)(**kwargs)
    assert_same_metainfo(ours.metainfo, theirs.metainfo)
    assert (ours.img_suffix, ours.seg_map_suffix, ours.ignore_index) == \
        (theirs.img_suffix, theirs.seg_map_suffix, theirs.ignore_index)
    classes = theirs.metainfo.get("classes")
    if classes:  # a reordered subset: the same label_map and palette subset
        subset = (classes[-1], classes[0])
        ours = lookup("dataset", type_name)(**kwargs, metainfo={"classes": subset})
        theirs = getattr(mmseg_datasets, type_name)(**kwargs, metainfo={"classes": subset})
        assert_same_metainfo(ours.metainfo, theirs.metainfo)
