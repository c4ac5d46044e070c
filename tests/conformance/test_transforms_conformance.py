"""Data transforms vs MMSegmentation 1.2.2 / mmcv 2.1 on the same odd-sized (97x131) image and label.

Deterministic transforms must give equal arrays and metadata. Random transforms draw from numpy's global
generator in the oracle's order, so with the same ``np.random.seed`` they must give equal arrays too, and
leave the generator in the same state (same number of draws). Every random transform here allows that
exact comparison; none needs a distribution test.
"""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from oracle import install_ext_stub, require_oracle

from semseg.build import build
from semseg.data.transforms import Compose

install_ext_stub()

H, W = 97, 131
META_KEYS = ("img_shape", "ori_shape", "scale", "scale_factor", "keep_ratio", "flip", "flip_direction",
             "pad_shape", "pad_fixed_size", "pad_size_divisor", "scale_idx", "edge_width")


def oracle_transform(cfg: dict):
    """The oracle's transform for a pipeline config dict."""
    require_oracle()
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    return TRANSFORMS.build(copy.deepcopy(cfg))


def oracle_compose(pipeline: list[dict]):
    require_oracle()
    from mmcv.transforms import Compose as OracleCompose

    return OracleCompose([oracle_transform(step) for step in pipeline])


def make_sample(label_kind: str = "random") -> dict:
    """A random BGR image and a label map: "random" (0..5 with an ignored patch), "blocky" (one dominant
    class with two blocks, so that cat_max_ratio retries happen) or "uniform" (one class and an ignored
    band: every cat_max_ratio retry fails)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    label = np.zeros((H, W), np.uint8)
    if label_kind == "random":
        label = rng.integers(0, 6, size=(H, W)).astype(np.uint8)
        label[40:50, 60:90] = 255
    elif label_kind == "blocky":
        label[10:30, 20:45] = 1
        label[60:90, 100:120] = 2
        label[:6] = 255
    else:
        label[:, :20] = 255
    return {"img": img, "gt_seg_map": label, "seg_fields": ["gt_seg_map"], "img_shape": (H, W),
            "ori_shape": (H, W)}


def assert_same_results(ours: dict, theirs: dict) -> None:
    np.testing.assert_array_equal(ours["img"], theirs["img"])
    for key in ("gt_seg_map", "gt_edge_map"):
        assert (key in ours) == (key in theirs), key
        if key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key])
    for key in META_KEYS:
        if key in theirs:
            assert key in ours, key
            assert ours[key] == theirs[key], (key, ours[key], theirs[key])


def run_both(cfg: dict, sample: dict, seed: int = 0) -> tuple[dict, dict]:
    """Run our transform and the oracle's on copies of ``sample`` from the same numpy seed; the generator
    must end in the same state (the same number of draws)."""
    oracle = oracle_transform(cfg)
    ours = build("transform", copy.deepcopy(cfg))
    np.random.seed(seed)
    our_results = ours(copy.deepcopy(sample))
    our_state = np.random.get_state()[1].copy()
    np.random.seed(seed)
    oracle_results = oracle(copy.deepcopy(sample))
    np.testing.assert_array_equal(our_state, np.random.get_state()[1])
    return our_results, oracle_results


DETERMINISTIC = {
    "resize_keep_ratio": dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    "resize_keep_ratio_down": dict(type="Resize", scale=(60, 45), keep_ratio=True),
    "resize_exact": dict(type="Resize", scale=(64, 50), keep_ratio=False),
    "resize_int_scale": dict(type="Resize", scale=77, keep_ratio=True),
    "resize_factor_keep_ratio": dict(type="Resize", scale_factor=0.75, keep_ratio=True),
    "resize_factor_1.75_keep_ratio": dict(type="Resize", scale_factor=1.75, keep_ratio=True),
    "resize_factor": dict(type="Resize", scale_factor=1.25, keep_ratio=False),
    "resize_factor_pair": dict(type="Resize", scale_factor=(0.5, 1.5), keep_ratio=False),
    "resize_bicubic": dict(type="Resize", scale=(200, 150), keep_ratio=True, interpolation="bicubic"),
    "resize_nearest": dict(type="Resize", scale=(50, 40), interpolation="nearest"),
    "pad_size": dict(type="Pad", size=(140, 100)),
    "pad_divisor": dict(type="Pad", size_divisor=32, pad_val=dict(img=3, seg=9)),
    "pad_square": dict(type="Pad", pad_to_square=True, size_divisor=7, pad_val=5),
    "pad_reflect": dict(type="Pad", size=(150, 120), padding_mode="reflect"),
    "pad_smaller": dict(type="Pad", size=(100, 50)),
    "flip_horizontal": dict(type="RandomFlip", prob=1.0),
    "flip_vertical": dict(type="RandomFlip", prob=1.0, direction="vertical"),
    "flip_diagonal": dict(type="RandomFlip", prob=1.0, direction="diagonal"),
    "flip_none": dict(type="RandomFlip", prob=0.0),
    "flip_swap": dict(type="RandomFlip", prob=1.0, swap_seg_labels=[(1, 2), (3, 4)]),
    "generate_edge": dict(type="GenerateEdge", edge_width=3),
}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_transform(name: str) -> None:
    ours, theirs = run_both(DETERMINISTIC[name], make_sample())
    assert_same_results(ours, theirs)


RANDOM = {
    "random_resize_ratio": dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    "random_resize_ratio_exact": dict(type="RandomResize", scale=(160, 120), ratio_range=(0.5, 1.5)),
    "random_resize_bounds": dict(type="RandomResize", scale=[(100, 50), (200, 120)], keep_ratio=False),
    "random_choice_resize": dict(type="RandomChoiceResize", scales=[(64, 32), (128, 96), (100, 100)],
                                 keep_ratio=True),
    "random_crop": dict(type="RandomCrop", crop_size=(40, 50)),
    "random_crop_larger": dict(type="RandomCrop", crop_size=(120, 60)),
    "random_crop_cat_max_ratio_blocky": dict(type="RandomCrop", crop_size=(32, 32), cat_max_ratio=0.75),
    "random_crop_cat_max_ratio_uniform": dict(type="RandomCrop", crop_size=(32, 32), cat_max_ratio=0.75),
    "random_flip": dict(type="RandomFlip", prob=0.5),
    "random_flip_directions": dict(type="RandomFlip", prob=[0.3, 0.5], direction=["horizontal", "vertical"]),
    "random_flip_shared": dict(type="RandomFlip", prob=0.6, direction=["horizontal", "diagonal"]),
    "photometric": dict(type="PhotoMetricDistortion"),
    "photometric_strong": dict(type="PhotoMetricDistortion", brightness_delta=60, contrast_range=(0.2, 2.0),
                               saturation_range=(0.1, 2.5), hue_delta=40),
    "rotate": dict(type="RandomRotate", prob=0.5, degree=20),
    "rotate_auto_bound": dict(type="RandomRotate", prob=1.0, degree=(10, 60), auto_bound=True),
    "rotate_center_pad": dict(type="RandomRotate", prob=1.0, degree=45, center=(10.0, 20.0), pad_val=128,
                              seg_pad_val=7),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", RANDOM)
def test_random_transform_same_seed(name: str, seed: int) -> None:
    label_kind = name.rsplit("_", 1)[1] if "cat_max_ratio" in name else "random"
    ours, theirs = run_both(RANDOM[name], make_sample(label_kind), seed)
    if name == "rotate_auto_bound":  # a documented difference: MMSegmentation leaves img_shape stale
        assert theirs.pop("img_shape") == (H, W) and ours["img_shape"] == ours["img"].shape[:2] != (H, W)
    assert_same_results(ours, theirs)


def write_files(tmp_path: Path) -> tuple[str, str]:
    """A JPEG image and an 8-bit grayscale PNG label (values 0..6 and 255) on disk."""
    sample = make_sample()
    img_path, label_path = tmp_path / "img.jpg", tmp_path / "label.png"
    cv2.imwrite(str(img_path), sample["img"])
    label = sample["gt_seg_map"].copy()
    label[label == 5] = 0  # some zeros for reduce_zero_label
    cv2.imwrite(str(label_path), label)
    return str(img_path), str(label_path)


@pytest.mark.parametrize("color_type", ["color", "grayscale", "unchanged"])
def test_load_image_from_file(tmp_path: Path, color_type: str) -> None:
    img_path, _ = write_files(tmp_path)
    cfg = dict(type="LoadImageFromFile", color_type=color_type)
    ours, theirs = run_both(cfg, {"img_path": img_path})
    np.testing.assert_array_equal(ours["img"], theirs["img"])
    assert ours["img_shape"] == theirs["img_shape"] and ours["ori_shape"] == theirs["ori_shape"]


@pytest.mark.parametrize("reduce_zero_label", [False, True])
@pytest.mark.parametrize("label_map", [None, {1: 3, 3: 1, 0: 4}])
def test_load_annotations(tmp_path: Path, reduce_zero_label: bool, label_map: dict | None) -> None:
    _, label_path = write_files(tmp_path)
    results = {"seg_map_path": label_path, "seg_fields": [], "reduce_zero_label": reduce_zero_label,
               "label_map": label_map}
    for cfg in (dict(type="LoadAnnotations"), dict(type="LoadAnnotations", reduce_zero_label=reduce_zero_label)):
        ours, theirs = run_both(cfg, results)
        assert ours["gt_seg_map"].dtype == theirs["gt_seg_map"].dtype == np.uint8
        np.testing.assert_array_equal(ours["gt_seg_map"], theirs["gt_seg_map"])
        assert ours["seg_fields"] == theirs["seg_fields"] == ["gt_seg_map"]


@pytest.mark.parametrize("mode", ["P", "P_transparent", "L", "1"])
def test_load_annotations_reads_as_pillow(tmp_path: Path, mode: str) -> None:
    require_oracle()
    from PIL import Image

    rng = np.random.default_rng(3)
    indices = rng.integers(0, 2 if mode == "1" else 21, size=(H, W)).astype(np.uint8)
    if mode == "1":
        image = Image.fromarray(indices.astype(bool))
    elif mode == "L":
        image = Image.fromarray(indices, mode="L")
    else:
        image = Image.fromarray(indices, mode="P")
        image.putpalette(rng.integers(0, 256, size=3 * 256).astype(np.uint8).tobytes())
        if mode == "P_transparent":
            image.info["transparency"] = 0
    path = tmp_path / "label.png"
    image.save(path)
    ours, theirs = run_both(dict(type="LoadAnnotations"), {"seg_map_path": str(path), "seg_fields": [],
                                                            "reduce_zero_label": False})
    np.testing.assert_array_equal(ours["gt_seg_map"], theirs["gt_seg_map"])
    np.testing.assert_array_equal(ours["gt_seg_map"], indices)


def assert_same_packed(ours: dict, theirs_inputs: torch.Tensor, theirs_sample) -> None:
    assert ours["inputs"].dtype == theirs_inputs.dtype
    torch.testing.assert_close(ours["inputs"], theirs_inputs, rtol=0, atol=0)
    if "gt_sem_seg" in ours:
        torch.testing.assert_close(ours["gt_sem_seg"], theirs_sample.gt_sem_seg.data[0], rtol=0, atol=0)
    their_meta = theirs_sample.metainfo
    assert set(ours["meta"]) == set(their_meta)
    for key, value in their_meta.items():
        assert ours["meta"][key] == value, key


def test_pack_seg_inputs() -> None:
    sample = {**make_sample(), "img_path": "a.jpg", "seg_map_path": "a.png", "scale_factor": (1.0, 1.0),
              "flip": False, "reduce_zero_label": False, "unpacked_key": 1}
    ours, theirs = run_both(dict(type="PackSegInputs"), sample)
    assert_same_packed(ours, theirs["inputs"], theirs["data_samples"])


ADE_TRAIN = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
VOC_AUG_TRAIN = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=(128, 96), cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="RandomRotate", prob=0.5, degree=15),
    dict(type="PhotoMetricDistortion"),
    dict(type="Pad", size_divisor=32),
    dict(type="GenerateEdge"),
    dict(type="PackSegInputs"),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pipeline", [ADE_TRAIN, VOC_AUG_TRAIN], ids=["ade20k", "voc_more"])
def test_train_pipeline_same_seed(tmp_path: Path, pipeline: list[dict], seed: int) -> None:
    img_path, label_path = write_files(tmp_path)
    reduce = pipeline[1].get("reduce_zero_label", False)
    results = {"img_path": img_path, "seg_map_path": label_path, "seg_fields": [], "reduce_zero_label": reduce}
    oracle = oracle_compose(pipeline)
    np.random.seed(seed)
    ours = Compose(pipeline)(copy.deepcopy(results))
    np.random.seed(seed)
    theirs = oracle(copy.deepcopy(results))
    assert_same_packed(ours, theirs["inputs"], theirs["data_samples"])
    if "gt_edge_map" in ours:
        torch.testing.assert_close(ours["gt_edge_map"], theirs["data_samples"].gt_edge_map.data[0])


def test_test_time_aug(tmp_path: Path) -> None:
    img_path, label_path = write_files(tmp_path)
    tta = [dict(type="LoadImageFromFile"), dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="LoadAnnotations")], [dict(type="PackSegInputs")]])]
    results = {"img_path": img_path, "seg_map_path": label_path, "seg_fields": [], "reduce_zero_label": True}
    ours = Compose(copy.deepcopy(tta))(copy.deepcopy(results))
    theirs = oracle_compose(tta)(copy.deepcopy(results))
    assert len(ours) == len(theirs["inputs"]) == 12
    for packed, inputs, data_sample in zip(ours, theirs["inputs"], theirs["data_samples"], strict=True):
        assert_same_packed(packed, inputs, data_sample)
