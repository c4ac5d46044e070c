"""Bad data found early: file pairing at start-up, per-sample checks as samples load (unreadable files, size,
channels, label values) raised as errors naming the file and the fix, the same from a data-loader worker,
and the full scan (``check_dataset``, ``--check-data``) listing every problem with a class histogram."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from semseg.build import build
from semseg.cli import main
from semseg.data.check import check_config_data, check_dataset, palette_to_index
from semseg.data.datasets import BaseSegDataset, RepeatDataset
from semseg.data.datasets.base import SampleError
from semseg.data.transforms.loading import DataError, read_image, read_label_map

LOAD = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]
CLASSES = ("background", "road", "car")
PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142]]
SYNTHETIC = Path(__file__).parents[1] / "semseg/configs/synthetic/fcn_r18-d8_1xb8-600_synthetic-96x96.py"


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def good_label(seed: int, height: int = 6, width: int = 9) -> np.ndarray:
    label = np.random.default_rng(seed).integers(0, len(CLASSES), size=(height, width)).astype(np.uint8)
    label[0, 0] = 255
    return label


def make_folder(root: Path, count: int = 4) -> Path:
    for i in range(count):
        write(root / "img" / f"{i}.png", np.full((6, 9, 3), 20 * i, np.uint8))
        write(root / "ann" / f"{i}.png", good_label(i))
    return root


def folder_dataset(root: Path, **kwargs) -> BaseSegDataset:
    return build("dataset", {"type": "BaseSegDataset", "data_root": str(root), "img_suffix": ".png",
                             "data_prefix": {"img_path": "img", "seg_map_path": "ann"}, "pipeline": LOAD,
                             "metainfo": {"classes": CLASSES, "palette": PALETTE}, **kwargs})


def test_images_without_labels_fail_and_labels_without_images_warn(tmp_path: Path) -> None:
    make_folder(tmp_path)
    write(tmp_path / "ann" / "stray.png", good_label(9))
    with pytest.warns(UserWarning, match=r"1 label maps in .*ann.* have no image .*stray\.png"):
        dataset = folder_dataset(tmp_path)
    assert [Path(p).name for p in dataset.labels_without_images()] == ["stray.png"]
    (tmp_path / "ann" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 4 label map files are missing .*2\.png"):
        folder_dataset(tmp_path)


def test_unreadable_and_truncated_files_raise_data_error_naming_them(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3)).astype(np.uint8)
    for ext in (".png", ".jpg"):
        data = cv2.imencode(ext, image)[1].tobytes()
        path = tmp_path / f"cut{ext}"
        path.write_bytes(data[: len(data) - 3])
        with pytest.raises(DataError, match=f"cannot decode image .*cut{ext}") as caught:
            read_image(path)
        assert caught.value.path == str(path) and caught.value.kind == "unreadable"
    huge = tmp_path / "huge.png"  # a header claiming 60000x60000 pixels: cv2 itself raises cv2.error
    header = bytes.fromhex("0000ea600000ea60 0802000000")
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + header + b"\x00" * 4)
    with pytest.raises(DataError, match="huge.png"):
        read_image(huge)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(FileNotFoundError, match="folder.png"):
        read_label_map(tmp_path / "folder.png")


def test_sample_errors_name_the_files(tmp_path: Path) -> None:
    make_folder(tmp_path)
    write(tmp_path / "ann" / "1.png", good_label(1, 6, 8))
    bad = good_label(2)
    bad[2, 2] = bad[3, 3] = 3
    write(tmp_path / "ann" / "2.png", bad)
    (tmp_path / "img" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = folder_dataset(tmp_path)
    assert dataset[0]["gt_seg_map"].shape == (6, 9)
    with pytest.raises(SampleError, match=r"sample 1: label map .*1\.png has size 6x8 .*1\.png has size 6x9"):
        dataset[1]
    with pytest.raises(SampleError, match=r"2\.png has values \[3\] outside the 3 classes \(0\.\.2\) and "
                                          r"ignore_index 255; if 0 means") as caught:
        dataset[2]  # 3 == num_classes: the hint is reduce_zero_label
    assert isinstance(caught.value.__cause__, DataError) and caught.value.__cause__.values == (3,)
    with pytest.raises(SampleError, match=r"sample 3: cannot decode image .*3\.png"):
        dataset[3]
    assert isinstance(SampleError("x"), ValueError)
    with pytest.raises(SampleError, match=r"sample 0 \(img_path .*0\.png, seg_map_path .*0\.png\): KeyError: 'nope'"):
        folder_dataset(tmp_path, pipeline=[lambda results: results["nope"]])[0]


def test_color_coded_and_wide_labels_say_the_fix(tmp_path: Path) -> None:
    make_folder(tmp_path, 3)
    index = good_label(0)
    index[index == 255] = 0
    colors = np.array(PALETTE, np.uint8)[index]  # (H, W, 3) RGB
    write(tmp_path / "ann" / "0.png", colors[:, :, ::-1])
    write(tmp_path / "ann" / "1.png", np.repeat(good_label(1)[:, :, None], 3, axis=2))
    write(tmp_path / "ann" / "2.png", good_label(2).astype(np.uint16) + 256)
    dataset = folder_dataset(tmp_path)
    with pytest.raises(SampleError, match=r"0\.png must have one channel .* color-coded .*palette_to_index"):
        dataset[0]
    np.testing.assert_array_equal(palette_to_index(colors, PALETTE), index)
    stray = colors.copy()
    stray[1, 1] = (1, 2, 3)
    assert palette_to_index(stray, PALETTE)[1, 1] == 255
    with pytest.raises(SampleError, match=r"1\.png must have one channel .* channels are equal: save it with one"):
        dataset[1]
    with pytest.raises(SampleError, match=r"2\.png \(uint16\) holds values outside 0\.\.255"):
        dataset[2]


def test_worker_failure_is_reported_with_its_path(tmp_path: Path) -> None:
    make_folder(tmp_path, 2)
    (tmp_path / "img" / "1.png").write_bytes(b"not an image")
    loader = DataLoader(folder_dataset(tmp_path), batch_size=1, num_workers=1, collate_fn=lambda batch: batch)
    with pytest.raises(SampleError) as caught:
        list(loader)
    message = str(caught.value)
    assert message.startswith("BaseSegDataset sample 1: cannot decode image ")
    assert str(tmp_path / "img" / "1.png") in message and message.endswith("(in DataLoader worker process 0)")
    assert "Traceback" not in message and "\n" not in message
    assert any("Traceback" in note and "cannot decode" in note for note in caught.value.__notes__)


def test_full_scan_lists_every_problem_with_a_histogram(tmp_path: Path) -> None:
    make_folder(tmp_path, 6)
    for i in (1, 2):
        bad = good_label(i)
        bad[1, 1] = 7
        write(tmp_path / "ann" / f"{i}.png", bad)
    write(tmp_path / "ann" / "3.png", good_label(3, 5, 9))
    (tmp_path / "img" / "4.png").write_bytes((tmp_path / "img" / "4.png").read_bytes()[:30])
    write(tmp_path / "ann" / "5.png", np.array(PALETTE, np.uint8)[good_label(5) % 3][:, :, ::-1])
    write(tmp_path / "ann" / "orphan.png", good_label(0))
    with pytest.warns(UserWarning, match="orphan.png"):
        dataset = folder_dataset(tmp_path)
    report = check_dataset(RepeatDataset(dataset, times=3), workers=2)
    kinds = sorted((p.kind, Path(p.path).name) for p in report.problems)
    assert kinds == [("channels", "5.png"), ("orphan", "orphan.png"), ("size", "3.png"), ("unreadable", "4.png"),
                     ("values", "1.png"), ("values", "2.png")]
    expected = sum(np.bincount(label.ravel(), minlength=256) for label in (good_label(0), good_label(3, 5, 9),
                                                                           good_label(4)))
    for i in (1, 2):
        bad = good_label(i)
        bad[1, 1] = 7
        expected = expected + np.bincount(bad.ravel(), minlength=256)
    np.testing.assert_array_equal(report.histogram, expected[:3])
    assert report.ignored == expected[255] and report.num_samples == 6
    text = report.format()
    assert "class histogram" in text and "road" in text and "ignored (255)" in text
    assert "value 7: " in text and "1.png" in text and "2.png" in text
    with pytest.raises(DataError, match=r"1 label maps without images.*1 label maps with several channels.*first: "):
        report.raise_for_problems()
    listing = check_dataset(dataset, full=False)
    assert listing.histogram is None and [p.kind for p in listing.problems] == ["orphan"]


def test_full_scan_notes_a_reduce_zero_label_that_hides_a_class(tmp_path: Path) -> None:
    make_folder(tmp_path, 2)
    report = check_dataset(folder_dataset(tmp_path, reduce_zero_label=True))
    assert report.ok and report.histogram[-1] == 0
    assert any("set reduce_zero_label=False" in note for note in report.notes)


def write_config(tmp_path: Path, root: Path) -> Path:
    dataset = (f"dict(_delete_=True, type='BaseSegDataset', data_root={str(root)!r}, img_suffix='.png', "
               f"data_prefix=dict(img_path='img', seg_map_path='ann'), metainfo=dict(classes={CLASSES!r}), "
               "pipeline=PIPELINE)")
    path = tmp_path / "cfg.py"
    path.write_text(f"_base_ = [{str(SYNTHETIC)!r}]\n"
                    f"train_dataloader = dict(dataset={dataset.replace('PIPELINE', '{{_base_.train_pipeline}}')})\n"
                    f"val_dataloader = dict(dataset={dataset.replace('PIPELINE', '{{_base_.test_pipeline}}')})\n"
                    "test_dataloader = val_dataloader\n")
    return path


def test_check_data_option_stops_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    root = make_folder(tmp_path / "data", 3)
    config = write_config(tmp_path, root)
    from semseg.config import load_config

    lines: list[str] = []
    check_config_data(load_config(config), ("train_dataloader", "val_dataloader", "no_dataloader"), lines.append)
    assert len(lines) == 2 and lines[0].startswith("[train_dataloader] data check: BaseSegDataset")
    bad = good_label(1)
    bad[2, 3] = 9
    write(root / "ann" / "1.png", bad)
    work_dir = tmp_path / "work"
    assert main(["train", str(config), "--work-dir", str(work_dir), "--check-data"]) == 1
    out, err = capsys.readouterr()
    assert "class histogram" in out and "value 9: " in out
    error = err.strip().splitlines()[-1]
    assert error.startswith("semseg: error: ") and f"{root / 'ann' / '1.png'} has values [9]" in error
    assert not list(work_dir.glob("*.pth"))
    assert main(["test", str(config), "unused.pth", "--check-data"]) == 1
    assert capsys.readouterr().out.startswith("[test_dataloader] data check: BaseSegDataset")
