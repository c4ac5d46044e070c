"""Unit tests of the data transforms: shapes, rounding, joint image/label moves, randomness, PNG labels."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semseg.build import build
from semseg.data.transforms import (
    Compose,
    GenerateEdge,
    LoadAnnotations,
    LoadImageFromFile,
    PackSegInputs,
    Pad,
    PhotoMetricDistortion,
    RandomChoiceResize,
    RandomCrop,
    RandomFlip,
    RandomResize,
    RandomRotate,
    Resize,
    TestTimeAug,
    read_label_map,
)

H, W = 97, 131


def coord_sample(height: int = H, width: int = W) -> dict:
    """An image whose pixels encode their position (row in B, column in G, a mix in R) and a label map that
    is a function of the same position, so that any misalignment between the two shows up."""
    rows, cols = np.mgrid[:height, :width]
    img = np.stack([rows % 256, cols % 256, (rows * 7 + cols) % 256], axis=-1).astype(np.uint8)
    label = ((rows // 10 + cols // 10) % 6).astype(np.uint8)
    return {"img": img, "gt_seg_map": label, "seg_fields": ["gt_seg_map"], "img_shape": (height, width),
            "ori_shape": (height, width)}


def label_of(img: np.ndarray) -> np.ndarray:
    """The label coord_sample gives each pixel, recomputed from the pixel's encoded position."""
    rows, cols = img[..., 0].astype(int), img[..., 1].astype(int)
    return ((rows // 10 + cols // 10) % 6).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# A tiny PNG encoder (zlib + struct), to write label files without pillow.
# ---------------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", len(payload), kind) + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(pixels: np.ndarray, color_type: int, bit_depth: int = 8, palette: np.ndarray | None = None,
               transparency: bytes | None = None) -> bytes:
    """PNG bytes of (H, W) ``pixels``: color_type 3 (paletted) or 0 (gray), bit depth 8, 4 or 1."""
    height, width = pixels.shape
    if bit_depth == 8:
        rows = [row.astype(np.uint8).tobytes() for row in pixels]
    elif bit_depth == 4:
        padded = np.pad(pixels, ((0, 0), (0, width % 2))).astype(np.uint8)
        rows = [((row[0::2] << 4) | row[1::2]).tobytes() for row in padded]
    else:
        rows = [np.packbits(row.astype(bool)).tobytes() for row in pixels]
    data = [b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))]
    if palette is not None:
        data.append(_chunk(b"PLTE", palette.astype(np.uint8).tobytes()))
    if transparency is not None:
        data.append(_chunk(b"tRNS", transparency))
    data.append(_chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in rows))))
    data.append(_chunk(b"IEND", b""))
    return b"".join(data)


@pytest.mark.parametrize("bit_depth", [8, 4])
def test_paletted_png_reads_as_palette_indices(tmp_path: Path, bit_depth: int) -> None:
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 2 ** bit_depth, size=(23, 37)).astype(np.uint8)
    palette = rng.integers(0, 256, size=(2 ** bit_depth, 3))
    path = tmp_path / "voc_label.png"
    path.write_bytes(encode_png(indices, 3, bit_depth, palette, transparency=b"\x00\x80"))
    assert not np.array_equal(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), indices)  # cv2 alone gives colors
    np.testing.assert_array_equal(read_label_map(path), indices)
    results = LoadAnnotations()({"seg_map_path": str(path), "ori_shape": (23, 37)})
    assert results["gt_seg_map"].dtype == np.uint8
    np.testing.assert_array_equal(results["gt_seg_map"], indices)
    assert results["seg_fields"] == ["gt_seg_map"]


def test_gray_pngs_read_as_pillow_unchanged(tmp_path: Path) -> None:
    bits = np.random.default_rng(1).integers(0, 2, size=(9, 21))
    path = tmp_path / "mask.png"
    path.write_bytes(encode_png(bits, 0, 1))
    np.testing.assert_array_equal(read_label_map(path), bits)  # 0/1 as pillow, not cv2's 0/255
    gray = np.random.default_rng(2).integers(0, 256, size=(9, 21)).astype(np.uint8)
    path.write_bytes(encode_png(gray, 0, 8))
    np.testing.assert_array_equal(read_label_map(path), gray)


def test_truncated_png_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(encode_png(np.zeros((5, 5)), 3, 8, np.zeros((256, 3)))[:40])
    with pytest.raises(ValueError, match="broken.png"):
        read_label_map(path)


def test_reduce_zero_label_and_label_map(tmp_path: Path) -> None:
    label = np.array([[0, 1, 2], [254, 255, 3]], dtype=np.uint8)
    path = tmp_path / "ade.png"
    cv2.imwrite(str(path), label)
    reduced = LoadAnnotations(reduce_zero_label=True)({"seg_map_path": str(path)})["gt_seg_map"]
    np.testing.assert_array_equal(reduced, [[255, 0, 1], [253, 255, 2]])
    from_dataset = LoadAnnotations()({"seg_map_path": str(path), "reduce_zero_label": True})["gt_seg_map"]
    np.testing.assert_array_equal(from_dataset, reduced)
    mapped = LoadAnnotations()({"seg_map_path": str(path), "label_map": {1: 2, 2: 1}})["gt_seg_map"]
    np.testing.assert_array_equal(mapped, [[0, 2, 1], [254, 255, 3]])  # a swap: applied all at once
    with pytest.raises(ValueError, match="contradicts"):
        LoadAnnotations(reduce_zero_label=True)({"seg_map_path": str(path), "reduce_zero_label": False})


def test_label_size_mismatch_names_file_and_sizes(tmp_path: Path) -> None:
    image_path, label_path = tmp_path / "a.jpg", tmp_path / "a_label.png"
    cv2.imwrite(str(image_path), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(label_path), np.zeros((20, 31), np.uint8))
    pipeline = Compose([dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")])
    with pytest.raises(ValueError, match=r"a_label\.png has size 20x31 .* has size 20x30"):
        pipeline({"img_path": str(image_path), "seg_map_path": str(label_path)})


def test_load_image_ignore_empty_stops_the_pipeline(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        LoadImageFromFile()({"img_path": missing})
    pipeline = Compose([LoadImageFromFile(ignore_empty=True), PackSegInputs()])
    assert pipeline({"img_path": missing}) is None


def test_resize_keep_ratio_rounding() -> None:
    results = Resize(scale=(2048, 512), keep_ratio=True)(coord_sample())
    factor = min(2048 / W, 512 / H)  # the short side (97) limits: 512 / 97
    assert results["img"].shape == (int(H * factor + 0.5), int(W * factor + 0.5), 3) == (512, 691, 3)
    assert results["gt_seg_map"].shape == (512, 691) and results["img_shape"] == (512, 691)
    assert results["scale_factor"] == (691 / W, 512 / H) and results["keep_ratio"] is True
    assert set(np.unique(results["gt_seg_map"])) <= set(range(6))  # nearest: no new label values


def test_resize_exact_and_by_factor() -> None:
    results = Resize(scale=(50, 40))(coord_sample())
    assert results["img"].shape == (40, 50, 3) and results["scale_factor"] == (50 / W, 40 / H)
    # scale_factor 0.5: scale (66, 49) = round-half-up of (65.5, 48.5), then fitted keeping the ratio
    results = Resize(scale_factor=0.5, keep_ratio=True)(coord_sample())
    assert results["scale"] == (66, 49) and results["img"].shape == (49, 66, 3)
    results = Resize(scale_factor=(2.0, 0.5))(coord_sample())
    assert results["img"].shape == (49, 262, 3)


def test_random_resize_ratio_range_and_bounds() -> None:
    np.random.seed(0)
    transform = RandomResize(scale=(200, 100), ratio_range=(0.5, 2.0), keep_ratio=True)
    seen = set()
    for _ in range(20):
        results = transform(coord_sample())
        width, height = results["scale"]
        assert 100 <= width <= 400 and 50 <= height <= 200 and abs(width / height - 2) < 0.05
        seen.add(results["img"].shape[:2])
        assert results["gt_seg_map"].shape == results["img"].shape[:2]
    assert len(seen) > 10
    transform = RandomResize(scale=[(60, 30), (62, 31)], keep_ratio=False)
    sizes = {transform(coord_sample())["img"].shape[:2] for _ in range(60)}
    assert sizes == {(h, w) for h in (30, 31) for w in (60, 61, 62)}  # both bounds inclusive


def test_random_choice_resize_records_index() -> None:
    transform = RandomChoiceResize(scales=[(64, 32), (128, 64)], keep_ratio=False)
    for _ in range(10):
        results = transform(coord_sample())
        assert results["img"].shape[:2] == [(32, 64), (64, 128)][results["scale_idx"]]


def test_random_crop_shapes_and_alignment() -> None:
    np.random.seed(1)
    results = RandomCrop(crop_size=(40, 50))(coord_sample())
    assert results["img"].shape == (40, 50, 3) and results["img_shape"] == (40, 50)
    np.testing.assert_array_equal(results["gt_seg_map"], label_of(results["img"]))
    small = RandomCrop(crop_size=500)(coord_sample())  # larger than the image: the whole image
    assert small["img"].shape == (H, W, 3)


def test_random_crop_respects_cat_max_ratio() -> None:
    sample = coord_sample()
    sample["gt_seg_map"][:] = 0
    sample["gt_seg_map"][:, :64] = (np.arange(64) // 8 % 2)[None]  # balanced 0/1 stripes on the left half only
    sample["gt_seg_map"][:5] = 255  # ignored rows do not count
    transform = RandomCrop(crop_size=(32, 32), cat_max_ratio=0.75)
    first_draw_unbalanced = 0
    for seed in range(20):
        np.random.seed(seed)
        crop = transform({**sample, "gt_seg_map": sample["gt_seg_map"].copy()})["gt_seg_map"]
        counts = np.bincount(crop[crop != 255].ravel(), minlength=2)
        assert counts.max() / counts.sum() < 0.75
        np.random.seed(seed)
        top, left = np.random.randint(0, H - 32 + 1), np.random.randint(0, W - 32 + 1)
        first = sample["gt_seg_map"][top:top + 32, left:left + 32]
        counts = np.bincount(first[first != 255].ravel(), minlength=2)
        first_draw_unbalanced += counts.max() / counts.sum() >= 0.75
    assert first_draw_unbalanced >= 5  # the retries did the work
    np.random.seed(0)  # without cat_max_ratio: one draw of top and left, no retries
    expected = (np.random.randint(0, H - 32 + 1), np.random.randint(0, W - 32 + 1), np.random.rand())
    np.random.seed(0)
    crop = RandomCrop(crop_size=(32, 32))(coord_sample())["img"]
    assert (crop[0, 0, 0], crop[0, 0, 1], np.random.rand()) == expected


@pytest.mark.parametrize("direction, flipped", [("horizontal", lambda a: a[:, ::-1]),
                                                ("vertical", lambda a: a[::-1]),
                                                ("diagonal", lambda a: a[::-1, ::-1])])
def test_random_flip_moves_labels_with_images(direction: str, flipped) -> None:
    sample = coord_sample()
    results = RandomFlip(prob=1.0, direction=direction)(coord_sample())
    assert results["flip"] is True and results["flip_direction"] == direction
    np.testing.assert_array_equal(results["img"], flipped(sample["img"]))
    np.testing.assert_array_equal(results["gt_seg_map"], flipped(sample["gt_seg_map"]))
    np.testing.assert_array_equal(results["gt_seg_map"], label_of(results["img"]))


def test_random_flip_probabilities_and_swap() -> None:
    results = RandomFlip(prob=0.0)(coord_sample())
    assert results["flip"] is False and results["flip_direction"] is None
    np.testing.assert_array_equal(results["img"], coord_sample()["img"])
    np.random.seed(0)
    transform = RandomFlip(prob=[0.3, 0.5], direction=["horizontal", "vertical"])
    directions = [transform(coord_sample())["flip_direction"] for _ in range(400)]
    assert 0.2 < directions.count("horizontal") / 400 < 0.4 and 0.4 < directions.count("vertical") / 400 < 0.6
    swapped = RandomFlip(prob=1.0, swap_seg_labels=[(1, 2)])(coord_sample())["gt_seg_map"]
    plain = coord_sample()["gt_seg_map"][:, ::-1]
    np.testing.assert_array_equal(swapped, np.choose(plain, [0, 2, 1, 3, 4, 5]))


def test_random_rotate_pads_labels_with_seg_pad_val() -> None:
    results = RandomRotate(prob=1.0, degree=(45, 45), seg_pad_val=7)(coord_sample())
    label, img = results["gt_seg_map"], results["img"]
    assert label.shape == (H, W) and img.shape == (H, W, 3)
    for y, x in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]:
        assert label[y, x] == 7 and (img[y, x] == 0).all()
    assert set(np.unique(label)) <= set(range(6)) | {7}
    unrotated = RandomRotate(prob=0.0, degree=30)(coord_sample())
    np.testing.assert_array_equal(unrotated["img"], coord_sample()["img"])


def test_random_rotate_auto_bound_quarter_turn() -> None:
    sample = coord_sample(30, 50)
    results = RandomRotate(prob=1.0, degree=(90, 90), auto_bound=True)(coord_sample(30, 50))
    assert results["img"].shape[:2] == (50, 30) and results["img_shape"] == (50, 30)
    np.testing.assert_array_equal(results["gt_seg_map"], np.rot90(sample["gt_seg_map"], k=-1))  # clockwise
    with pytest.raises(ValueError, match="auto_bound"):
        RandomRotate(prob=1.0, degree=10, center=(3, 3), auto_bound=True)


def test_pad_sizes_and_values() -> None:
    results = Pad(size_divisor=32)(coord_sample())
    assert results["img"].shape == (128, 160, 3) and results["pad_shape"] == (128, 160, 3)
    assert results["gt_seg_map"].shape == (128, 160)
    assert (results["gt_seg_map"][H:] == 255).all() and (results["img"][:, W:] == 0).all()
    np.testing.assert_array_equal(results["img"][:H, :W], coord_sample()["img"])
    results = Pad(size=(140, 100), pad_val=dict(img=3, seg=9))(coord_sample())
    assert results["img"].shape == (100, 140, 3) and results["img_shape"] == (100, 140)
    assert (results["img"][H:] == 3).all() and (results["gt_seg_map"][:, W:] == 9).all()
    square = Pad(pad_to_square=True, size_divisor=10)(coord_sample())
    assert square["img"].shape[:2] == (140, 140)


def test_photometric_distortion_changes_colors_only() -> None:
    sample = coord_sample()
    changed = 0
    for seed in range(5):
        np.random.seed(seed)
        first = PhotoMetricDistortion()(coord_sample())
        np.random.seed(seed)
        again = PhotoMetricDistortion()(coord_sample())
        np.testing.assert_array_equal(first["img"], again["img"])  # seeded: reproducible
        np.testing.assert_array_equal(first["gt_seg_map"], sample["gt_seg_map"])
        assert first["img"].dtype == np.uint8 and first["img"].shape == (H, W, 3)
        changed += not np.array_equal(first["img"], sample["img"])
    assert changed >= 3


def test_generate_edge_marks_the_boundary() -> None:
    label = np.zeros((12, 12), np.uint8)
    label[:, 6:] = 1
    label[8:, :3] = 255  # borders with ignored pixels are no edges
    results = GenerateEdge(edge_width=3)({"gt_seg_map": label, "img_shape": (12, 12)})
    edge = results["gt_edge_map"]
    assert edge.dtype == np.uint8 and edge[:, 4:8].all()  # left pixel marked at 5, dilated by one each side
    assert not edge[:, :4].any() and not edge[:, 8:].any()


def test_pack_seg_inputs() -> None:
    packed = PackSegInputs()(Resize(scale=(40, 30))(coord_sample()))
    assert packed["inputs"].shape == (3, 30, 40) and packed["inputs"].dtype == torch.uint8
    assert packed["gt_sem_seg"].shape == (30, 40) and packed["gt_sem_seg"].dtype == torch.int64
    assert packed["meta"]["img_shape"] == (30, 40) and packed["meta"]["ori_shape"] == (H, W)
    assert "scale" not in packed["meta"]


def test_test_time_aug_is_the_product() -> None:
    tta = build("transform", dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in (0.5, 1.0, 1.5)],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="PackSegInputs")]]))
    assert isinstance(tta, TestTimeAug)
    sample = coord_sample()
    outputs = tta(sample)
    assert len(outputs) == 6
    assert [out["meta"]["flip"] for out in outputs] == [False, True] * 3
    assert [out["inputs"].shape[1] for out in outputs] == [49, 49, 97, 97, 146, 146]
    assert sample["img"].shape == (H, W, 3) and "flip" not in sample  # each combination had its own copy
    with pytest.raises(ValueError, match="non-empty"):
        TestTimeAug(transforms=[[]])


def test_random_draws_follow_the_global_numpy_state() -> None:
    pipeline = Compose([dict(type="RandomResize", scale=(200, 100), ratio_range=(0.5, 2.0), keep_ratio=True),
                        dict(type="RandomCrop", crop_size=(48, 48), cat_max_ratio=0.75),
                        dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"),
                        dict(type="RandomRotate", prob=0.5, degree=20)])
    np.random.seed(3)
    first = pipeline(coord_sample())
    np.random.seed(3)
    second = pipeline(coord_sample())
    third = pipeline(coord_sample())
    np.testing.assert_array_equal(first["img"], second["img"])
    np.testing.assert_array_equal(first["gt_seg_map"], second["gt_seg_map"])
    assert not np.array_equal(second["img"], third["img"])
