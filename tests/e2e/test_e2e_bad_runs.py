"""Runs that must stop, and say why: a diverging loss (the checkpoints written before it stay and load),
and bad files in a folder dataset (a label value outside the classes, a truncated image, a label map
of the wrong size), each named in the error."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import pytest
from e2e_helpers import checkpoints, folder_config, load, records, run_semseg, train_args

from semseg.data.datasets.synthetic import write_synthetic_dataset


def test_diverging_loss_stops_and_keeps_checkpoints(tmp_path):
    work_dir = tmp_path / "work"
    proc = run_semseg(*train_args(work_dir, "optim_wrapper.optimizer.lr=1e12", "train_cfg.max_iters=20",
                                  "default_hooks.checkpoint.interval=1"), check=False)
    assert proc.returncode != 0
    # the loss turns non-finite, or (with lr 1e12, one iteration earlier) the weights a checkpoint would save
    match = re.search(r"(loss|weights) became (\S+) at iteration (\d+).*the last good checkpoint is (\S+)",
                      proc.stderr)
    assert match, proc.stderr[-2000:]
    what, value, failed_at, named = match.group(1), match.group(2), int(match.group(3)), Path(match.group(4))
    assert value in ("nan", "inf", "-inf", "non-finite") and 1 < failed_at < 20
    assert sorted(checkpoints(work_dir)) == list(range(max(1, failed_at - 2), failed_at))  # max_keep_ckpts=2
    assert named == work_dir / f"iter_{failed_at - 1}.pth"
    for path in checkpoints(work_dir).values():
        assert load(path)["meta"]["iter"] == int(path.stem.split("_")[1])
    logged = [row["iter"] for row in records(work_dir) if row["mode"] == "train"]
    assert logged == list(range(1, failed_at + (what == "weights")))  # the log up to the failure is kept


def _label_value_7(root: Path) -> tuple[Path, list[str]]:
    path = root / "ann_dir" / "train" / "00003.png"
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    label[16:48, 16:48] = 7  # central: every random crop keeps part of it
    cv2.imwrite(str(path), label)
    return path, ["[7]", "outside the 5 classes"]


def _truncated_image(root: Path) -> tuple[Path, list[str]]:
    path = root / "img_dir" / "train" / "00005.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, ["cannot decode"]


def _label_of_another_size(root: Path) -> tuple[Path, list[str]]:
    path = root / "ann_dir" / "train" / "00002.png"
    cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:50, :60])
    return path, ["50x60", "64x64"]


@pytest.mark.parametrize("spoil", [_label_value_7, _truncated_image, _label_of_another_size],
                         ids=["label-value", "truncated-image", "label-size"])
def test_bad_file_stops_training_naming_it(spoil, tmp_path):
    """8 training images, batch 4: every file is read within the first two iterations."""
    root = write_synthetic_dataset(tmp_path / "data", num_train=8, num_val=2, img_size=(64, 64))
    bad_file, phrases = spoil(root)
    config = folder_config(tmp_path / "folder_config.py", root)
    proc = run_semseg(*train_args(tmp_path / "work", "train_cfg.max_iters=4", config=config), check=False)
    assert proc.returncode != 0
    error = proc.stderr.strip().splitlines()[-1]
    assert str(bad_file) in error, proc.stderr[-2000:]
    for phrase in phrases:
        assert phrase in error


def test_folder_dataset_trains(tmp_path):
    """The same folder dataset, unspoilt, trains and validates: the failures above are the bad files'."""
    root = write_synthetic_dataset(tmp_path / "data", num_train=8, num_val=2, img_size=(64, 64))
    config = folder_config(tmp_path / "folder_config.py", root)
    run_semseg(*train_args(tmp_path / "work", "train_cfg.max_iters=4", config=config))
    assert [row["iter"] for row in records(tmp_path / "work") if row["mode"] == "val"] == [4]
