"""Datasets on tiny fixture trees in each dataset's real layout: files found, order, suffixes, label
conventions, split files, wrappers, errors that name the path; and the Cityscapes label converter."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import semseg
from semseg.build import build
from semseg.config import Config
from semseg.data.datasets import (
    BaseSegDataset,
    CityscapesDataset,
    ConcatDataset,
    PascalVOCDataset,
    RepeatDataset,
    convert_cityscapes,
)
from semseg.data.datasets.cityscapes import label_ids_to_train_ids, polygons_to_train_ids

LOAD = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]


def write_image(path, height=2, width=4, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), value, np.uint8)
    assert cv2.imwrite(str(path), image)


def write_label(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(label, np.uint8))


LABEL = np.array([[0, 1, 2, 3], [4, 5, 255, 0]], np.uint8)
TWO_CLASS_LABEL = np.array([[0, 1, 1, 0], [1, 0, 255, 0]], np.uint8)  # the retinal datasets: background, vessel

# (type, img folder, seg folder, image stems, img suffix, seg suffix, reduce_zero_label, extra kwargs)
LAYOUTS = [
    ("CityscapesDataset", "leftImg8bit/train", "gtFine/train",
     ["bochum/bochum_000000_000313", "aachen/aachen_000001_000019", "aachen/aachen_000000_000019"],
     "_leftImg8bit.png", "_gtFine_labelTrainIds.png", False, {}),
    ("ADE20KDataset", "images/training", "annotations/training",
     ["ADE_train_00000002", "ADE_train_00000001"], ".jpg", ".png", True, {}),
    ("COCOStuffDataset", "images/train2017", "annotations/train2017",
     ["000000000009", "000000000025"], ".jpg", "_labelTrainIds.png", False, {}),
    ("COCOStuffDataset", "images/train2014", "annotations/train2014",
     ["COCO_train2014_000000000077", "COCO_train2014_000000000078"], ".jpg", "_labelTrainIds.png", True,
     {"reduce_zero_label": True}),
    ("LoveDADataset", "img_dir/train", "ann_dir/train", ["1366", "10"], ".png", ".png", True, {}),
    ("PotsdamDataset", "img_dir/train", "ann_dir/train", ["2_10_0_0_512_512", "2_10_0_512_512_1024"],
     ".png", ".png", True, {}),
    ("ISPRSDataset", "img_dir/val", "ann_dir/val", ["area1_0_0_512_512", "area1_0_512_512_1024"],
     ".png", ".png", True, {}),
    ("iSAIDDataset", "img_dir/train", "ann_dir/train", ["P0000_0_896_0_896", "P0000_0_896_600_1496"],
     ".png", "_instance_color_RGB.png", False, {}),
    ("DarkZurichDataset", "rgb_anon/val/night/GOPR0356", "gt/val/night/GOPR0356",
     ["GOPR0356_frame_000324", "GOPR0356_frame_000321"], "_rgb_anon.png", "_gt_labelTrainIds.png", False, {}),
    ("NightDrivingDataset", "leftImg8bit/test/night", "gtCoarse_daytime_trainvaltest/test/night",
     ["0_frame_0117", "0_frame_0013"], "_leftImg8bit.png", "_gtCoarse_labelTrainIds.png", False, {}),
    ("DRIVEDataset", "images/training", "annotations/training", ["21", "22"], ".png", "_manual1.png", False,
     {}),
    ("STAREDataset", "images/training", "annotations/training", ["im0001", "im0002"], ".png", ".ah.png",
     False, {}),
    ("ChaseDB1Dataset", "images/training", "annotations/training", ["Image_01L", "Image_01R"], ".png",
     "_1stHO.png", False, {}),
    ("HRFDataset", "images/training", "annotations/training", ["01_dr", "01_g"], ".png", ".png", False, {}),
    ("MapillaryDataset_v1", "training/images", "training/v1.2/labels", ["-0pCnc3", "_1Gn_xk"], ".jpg", ".png",
     False, {}),
    ("BDD100KDataset", "images/10k/train", "labels/sem_seg/masks/train", ["0a0a0b1a-7c39d841", "0004a4c0"],
     ".jpg", ".png", False, {}),
]


def make_tree(root, img_dir, seg_dir, stems, img_suffix, seg_suffix, label=LABEL):
    for i, stem in enumerate(stems):
        write_image(root / img_dir / f"{stem}{img_suffix}", value=10 * i)
        write_label(root / seg_dir / f"{stem}{seg_suffix}", label)


@pytest.mark.parametrize("layout", LAYOUTS, ids=[f"{entry[0]}-{entry[1]}" for entry in LAYOUTS])
def test_dataset_finds_its_files_and_applies_its_convention(tmp_path, layout):
    type_name, img_dir, seg_dir, stems, img_suffix, seg_suffix, reduce, extra = layout
    label = TWO_CLASS_LABEL if seg_suffix in ("_manual1.png", ".ah.png", "_1stHO.png") or type_name == "HRFDataset" \
        else LABEL
    make_tree(tmp_path, img_dir, seg_dir, stems, img_suffix, seg_suffix, label)
    # Files of the other datasets' conventions beside them must not be picked up.
    (tmp_path / img_dir / "notes.txt").write_text("not an image")
    write_image(tmp_path / img_dir / f".hidden{img_suffix}")
    dataset = build("dataset", {"type": type_name, "data_root": str(tmp_path),
                                "data_prefix": {"img_path": img_dir, "seg_map_path": seg_dir},
                                "pipeline": LOAD, **extra})
    assert len(dataset) == len(stems)
    expected = sorted(os.path.join(str(tmp_path), img_dir, s + img_suffix) for s in stems)
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    assert [info["img_path"] for info in infos] == expected
    for i, info in enumerate(infos):
        stem = info["img_path"][len(os.path.join(str(tmp_path), img_dir, "")):-len(img_suffix)]
        assert info["seg_map_path"] == os.path.join(str(tmp_path), seg_dir, stem + seg_suffix)
        assert info["reduce_zero_label"] is reduce and info["label_map"] is None
        assert info["seg_fields"] == [] and info["sample_idx"] == i
    loaded = dataset[0]["gt_seg_map"]
    if reduce:
        np.testing.assert_array_equal(loaded, [[255, 0, 1, 2], [3, 4, 255, 255]])
    else:
        np.testing.assert_array_equal(loaded, label)
    meta = dataset.metainfo
    assert len(meta["classes"]) == len(meta["palette"]) > 1
    assert meta["reduce_zero_label"] is reduce


@pytest.mark.parametrize("type_name,seg_dir,split_dir,reduce", [
    ("PascalVOCDataset", "SegmentationClass", "ImageSets/Segmentation", False),
    ("PascalVOCDataset", "SegmentationClassAug", "ImageSets/Segmentation", False),
    ("PascalContextDataset", "SegmentationClassContext", "ImageSets/SegmentationContext", False),
    ("PascalContextDataset59", "SegmentationClassContext", "ImageSets/SegmentationContext", True),
])
def test_split_file_datasets_keep_the_file_order(tmp_path, type_name, seg_dir, split_dir, reduce):
    stems = ["2007_000129", "2007_000033", "2007_000042"]
    make_tree(tmp_path, "JPEGImages", seg_dir, stems, ".jpg", ".png")
    (tmp_path / split_dir).mkdir(parents=True)
    (tmp_path / split_dir / "train.txt").write_text("2007_000129\n2007_000033\n\n")
    dataset = build("dataset", {"type": type_name, "data_root": str(tmp_path),
                                "data_prefix": {"img_path": "JPEGImages", "seg_map_path": seg_dir},
                                "ann_file": f"{split_dir}/train.txt", "pipeline": LOAD})
    assert [dataset.get_data_info(i)["img_path"] for i in range(len(dataset))] == [
        os.path.join(str(tmp_path), "JPEGImages", f"{s}.jpg") for s in stems[:2]]
    assert dataset.get_data_info(1)["seg_map_path"] == os.path.join(str(tmp_path), seg_dir, "2007_000033.png")
    assert dataset.reduce_zero_label is reduce
    assert dataset[1]["gt_seg_map"][0, 1] == (0 if reduce else 1)


def test_voc_needs_a_split_file(tmp_path):
    make_tree(tmp_path, "JPEGImages", "SegmentationClass", ["a"], ".jpg", ".png")
    with pytest.raises(ValueError, match="ann_file"):
        PascalVOCDataset(data_root=tmp_path, data_prefix={"img_path": "JPEGImages",
                                                          "seg_map_path": "SegmentationClass"})


def test_class_subset_builds_label_map_and_palette(tmp_path):
    make_tree(tmp_path, "leftImg8bit/val", "gtFine/val", ["x/x_1"], "_leftImg8bit.png",
              "_gtFine_labelTrainIds.png")
    dataset = CityscapesDataset(data_root=tmp_path, metainfo={"classes": ("sidewalk", "road", "wall")},
                                data_prefix={"img_path": "leftImg8bit/val", "seg_map_path": "gtFine/val"},
                                pipeline=LOAD)
    label_map = dataset.get_data_info(0)["label_map"]
    assert label_map[0] == 1 and label_map[1] == 0 and label_map[3] == 2 and label_map[2] == 255
    assert len(label_map) == 19
    meta = dataset.metainfo
    assert meta["classes"] == ("sidewalk", "road", "wall")
    assert meta["palette"] == [[244, 35, 232], [128, 64, 128], [102, 102, 156]]
    np.testing.assert_array_equal(dataset[0]["gt_seg_map"], [[1, 0, 255, 2], [255, 255, 255, 1]])
    with pytest.raises(ValueError, match="not among its classes"):
        CityscapesDataset(data_root=tmp_path, metainfo={"classes": ("road", "unicorn")}, lazy_init=True)


def test_base_dataset_options(tmp_path):
    stems = [f"{i:03d}" for i in range(5)]
    make_tree(tmp_path, "img_dir/train", "ann_dir/train", stems, ".png", ".png")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    common = {"data_root": str(tmp_path), "img_suffix": ".png",
              "data_prefix": {"img_path": "img_dir/train", "seg_map_path": "ann_dir/train"}}
    plain = BaseSegDataset(**common, serialize_data=False)
    packed = BaseSegDataset(**common)
    assert [plain.get_data_info(i) for i in range(5)] == [packed.get_data_info(i) for i in range(5)]
    assert packed.get_data_info(-1)["sample_idx"] == 4
    with pytest.raises(IndexError):
        packed.get_data_info(5)
    assert [BaseSegDataset(**common, indices=2).get_data_info(i)["img_path"][-7:] for i in range(2)] == \
        ["000.png", "001.png"]
    assert BaseSegDataset(**common, indices=[4, 1]).get_data_info(0)["img_path"].endswith("004.png")
    assert len(BaseSegDataset(**common, indices=-2)) == 2
    lazy = BaseSegDataset(**common, lazy_init=True)
    assert not lazy._fully_initialized and len(lazy) == 5
    from_file = BaseSegDataset(**common, metainfo={"classes": str(tmp_path / "classes.txt")})
    meta = from_file.metainfo
    assert meta["classes"] == ("a", "b", "c")
    # No palette given: a fixed random one (numpy seed 42), as MMSegmentation makes.
    assert meta["palette"] == np.random.RandomState(42).randint(0, 255, size=(3, 3)).tolist()
    with pytest.raises(ValueError, match="classes"):
        BaseSegDataset(**common, test_mode=True)
    without_labels = BaseSegDataset(data_root=str(tmp_path), img_suffix=".png",
                                    data_prefix={"img_path": "img_dir/train"})
    assert "seg_map_path" not in without_labels.get_data_info(0)


def test_wrong_layouts_name_the_path(tmp_path):
    make_tree(tmp_path, "img_dir/train", "ann_dir/train", ["a", "b"], ".png", ".png")
    prefix = {"img_path": "img_dir/train", "seg_map_path": "ann_dir/train"}
    with pytest.raises(FileNotFoundError, match=r"image folder .*img_dir[/\\]val.* does not exist"):
        BaseSegDataset(data_root=tmp_path, img_suffix=".png",
                       data_prefix={"img_path": "img_dir/val", "seg_map_path": "ann_dir/train"})
    with pytest.raises(FileNotFoundError, match=r"label map folder .*ann_dir[/\\]val"):
        BaseSegDataset(data_root=tmp_path, img_suffix=".png",
                       data_prefix={"img_path": "img_dir/train", "seg_map_path": "ann_dir/val"})
    with pytest.raises(FileNotFoundError, match=r"no images ending in '_leftImg8bit.png' found under .*img"):
        CityscapesDataset(data_root=tmp_path, data_prefix=prefix)
    with pytest.raises(FileNotFoundError, match=r"split file .*missing.txt"):
        BaseSegDataset(data_root=tmp_path, img_suffix=".png", data_prefix=prefix, ann_file="missing.txt")
    (tmp_path / "ann_dir/train/b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 label map files are missing .*ann_dir.*b\.png"):
        BaseSegDataset(data_root=tmp_path, img_suffix=".png", data_prefix=prefix)
    (tmp_path / "split.txt").write_text("a\nzzz\n")
    with pytest.raises(FileNotFoundError, match=r"image files are missing .*zzz\.png"):
        BaseSegDataset(data_root=tmp_path, img_suffix=".png", ann_file="split.txt",
                       data_prefix={"img_path": "img_dir/train"})


def test_wrappers_build_nested_configs(tmp_path):
    make_tree(tmp_path, "images/training", "annotations/training", ["21", "22"], ".png", "_manual1.png",
              TWO_CLASS_LABEL)
    inner = {"type": "DRIVEDataset", "data_root": str(tmp_path), "pipeline": LOAD,
             "data_prefix": {"img_path": "images/training", "seg_map_path": "annotations/training"}}
    repeated = build("dataset", {"type": "RepeatDataset", "times": 3, "dataset": inner})
    assert isinstance(repeated, RepeatDataset) and len(repeated) == 6
    assert repeated.get_data_info(5)["img_path"] == repeated.dataset.get_data_info(1)["img_path"]
    assert repeated[4]["img_path"].endswith("21.png")
    assert repeated.metainfo["classes"] == ("background", "vessel")
    concat = build("dataset", {"type": "ConcatDataset", "datasets": [inner, repeated]})
    assert isinstance(concat, ConcatDataset) and len(concat) == 8
    assert concat.locate(2) == (1, 0) and concat.locate(-1) == (1, 5)
    assert concat[3]["img_path"].endswith("22.png")
    with pytest.raises(IndexError):
        concat.get_data_info(8)
    other = {**inner, "type": "STAREDataset", "seg_map_suffix": "_manual1.png"}
    assert len(build("dataset", {"type": "ConcatDataset", "datasets": [inner, other]})) == 4
    subset = {**inner, "metainfo": {"classes": ("vessel",)}}
    with pytest.raises(ValueError, match="metainfo"):
        build("dataset", {"type": "ConcatDataset", "datasets": [inner, subset]})
    assert len(build("dataset", {"type": "ConcatDataset", "datasets": [inner, subset],
                                 "ignore_keys": ["classes", "palette", "label_map"]})) == 4


def test_unknown_dataset_type_and_argument_are_reported():
    with pytest.raises(KeyError, match="CityscapesDataset"):
        build("dataset", {"type": "CitiscapesDataset"})
    with pytest.raises(TypeError, match="img_suffix"):
        build("dataset", {"type": "ADE20KDataset", "img_sufix": ".png"})


# ---- Cityscapes converter ------------------------------------------------------------------------------

def test_label_ids_to_train_ids_follow_the_official_table():
    ids = np.array([[0, 7, 8, 11, 12, 13, 17, 19], [20, 21, 22, 23, 24, 25, 26, 27],
                    [28, 31, 32, 33, 18, 29, 30, 34], [1, 2, 3, 4, 5, 6, 9, 10]], np.uint8)
    expected = np.array([[255, 0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14],
                         [15, 16, 17, 18, 255, 255, 255, 255], [255] * 8], np.uint8)
    np.testing.assert_array_equal(label_ids_to_train_ids(ids), expected)


def polygon_annotation():
    return {"imgHeight": 10, "imgWidth": 12, "objects": [
        {"label": "road", "polygon": [[0, 5], [11, 5], [11, 9], [0, 9]]},
        {"label": "sky", "polygon": [[0, 0], [11, 0], [11, 2], [0, 2]]},
        {"label": "cargroup", "polygon": [[2, 6], [5, 6], [5, 8], [2, 8]]},
        {"label": "license plate", "polygon": [[3, 7], [4, 7], [4, 7], [3, 7]]},
        {"label": "person", "deleted": 1, "polygon": [[0, 0], [11, 0], [11, 9], [0, 9]]},
        {"label": "bicycle", "polygon": [[8, 4], [10, 4], [10, 6], [8, 6]]},
    ]}


def test_polygons_rasterize_in_file_order():
    train_ids = polygons_to_train_ids(polygon_annotation())
    expected = np.full((10, 12), 255, np.uint8)
    expected[5:10, 0:12] = 0      # road
    expected[0:3, 0:12] = 10      # sky
    expected[6:9, 2:6] = 13       # "cargroup" is drawn as car; the license plate is not drawn
    expected[4:7, 8:11] = 18      # bicycle, drawn last, covers the road; the deleted person is skipped
    np.testing.assert_array_equal(train_ids, expected)
    with pytest.raises(ValueError, match="unknown Cityscapes label 'dragon'"):
        polygons_to_train_ids({"imgHeight": 2, "imgWidth": 2,
                               "objects": [{"label": "dragon", "polygon": []}]}, "x.json")


def test_convert_cityscapes_writes_train_ids_and_split_lists(tmp_path):
    gt = tmp_path / "gtFine"
    write_label(gt / "train/aachen/aachen_000000_000019_gtFine_labelIds.png", [[7, 26, 0], [33, 24, 18]])
    (gt / "val/lindau").mkdir(parents=True)
    (gt / "val/lindau/lindau_000000_000019_gtFine_polygons.json").write_text(json.dumps(polygon_annotation()))
    for stem in ("train/aachen/aachen_000000_000019", "val/lindau/lindau_000000_000019"):
        write_image(tmp_path / "leftImg8bit" / f"{stem}_leftImg8bit.png", height=2, width=3)

    written = convert_cityscapes(tmp_path)
    assert len(written) == 2
    out = cv2.imread(str(gt / "train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"),
                     cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out, [[0, 13, 255], [18, 11, 255]])
    out = cv2.imread(str(gt / "val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png"),
                     cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out, polygons_to_train_ids(polygon_annotation()))
    assert (tmp_path / "train.txt").read_text() == "aachen/aachen_000000_000019\n"
    assert (tmp_path / "val.txt").read_text() == "lindau/lindau_000000_000019\n"
    assert not (tmp_path / "test.txt").exists()
    assert convert_cityscapes(tmp_path) == []  # existing outputs are kept

    dataset = CityscapesDataset(data_root=tmp_path, ann_file="train.txt", pipeline=LOAD,
                                data_prefix={"img_path": "leftImg8bit/train", "seg_map_path": "gtFine/train"})
    np.testing.assert_array_equal(dataset[0]["gt_seg_map"], [[0, 13, 255], [18, 11, 255]])
    with pytest.raises(FileNotFoundError, match="gtCoarse"):
        convert_cityscapes(tmp_path, gt_dir="gtCoarse")


# ---- the shipped dataset configs -----------------------------------------------------------------------

def lazy(cfg):
    """A dataset config with every dataset in it lazily initialized (no files needed)."""
    cfg = dict(cfg)
    if cfg["type"] == "ConcatDataset":
        cfg["datasets"] = [lazy(inner) for inner in cfg["datasets"]]
    elif cfg["type"] == "RepeatDataset":
        cfg["dataset"] = lazy(cfg["dataset"])
    cfg["lazy_init"] = True
    return cfg


DATASET_CONFIGS = Path(semseg.__file__).parent / "configs/_base_/datasets"


@pytest.mark.parametrize("name", sorted(p.stem for p in DATASET_CONFIGS.glob("*.py")))
def test_shipped_dataset_configs_build(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative data roots point into an empty folder
    cfg = Config.fromfile(DATASET_CONFIGS / f"{name}.py").to_dict()
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset_cfg = cfg[key]["dataset"]
        dataset = build("dataset", lazy(dataset_cfg))
        assert type(dataset).__name__ == dataset_cfg["type"]
        with pytest.raises(FileNotFoundError, match=r"does not exist"):
            len(dataset)  # no data in the test tree: the error names the folder


def test_convert_cityscapes_command_line(tmp_path, capsys):
    path = Path(__file__).parents[1] / "tools" / "convert_cityscapes.py"
    spec = importlib.util.spec_from_file_location("convert_cityscapes_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    write_label(tmp_path / "gtFine/val/x/x_000000_000001_gtFine_labelIds.png", [[26, 0]])
    tool.main([str(tmp_path), "--source", "labelIds"])
    assert "wrote 1 label maps" in capsys.readouterr().out
    out = cv2.imread(str(tmp_path / "gtFine/val/x/x_000000_000001_gtFine_labelTrainIds.png"),
                     cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out, [[13, 255]])
    assert (tmp_path / "val.txt").read_text() == "x/x_000000_000001\n"


def test_cityscapes_train_ids_map_back_to_label_ids():
    from semseg.data.datasets.cityscapes import CityscapesDataset, label_ids_to_train_ids

    label_ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    train_ids = label_ids_to_train_ids(label_ids)
    back = CityscapesDataset.train_id_to_label_id(train_ids)
    evaluated = train_ids != 255
    assert np.array_equal(back[evaluated], label_ids[evaluated])  # road 7 -> 0 -> 7, car 26 -> 13 -> 26
    assert (back[~evaluated] == 0).all()
