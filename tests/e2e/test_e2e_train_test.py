"""``semseg train`` on the synthetic config until it has clearly learnt, then ``semseg test`` on its
checkpoint: scores, work-dir layout (logs, dumped config, checkpoints, pointer, best), predictions on disk."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from e2e_helpers import CONFIG, checkpoints, load, records, run_semseg, train_args

import semseg
from semseg.data.datasets.synthetic import generate_sample

MAX_ITERS = 80
VAL_IMAGES = 8
# An untrained model predicts background everywhere: mIoU ~11 (mAcc 20); uniform guessing gives ~15.
# 80 iterations reach ~85; 50 leaves a wide margin.
LEARNT_MIOU = 50.0


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    """One training run: 80 iterations, validation at 40 and 80, checkpoints every 20 (keep 2), best mIoU."""
    work_dir = tmp_path_factory.mktemp("train") / "work"
    run_semseg(*train_args(work_dir, f"train_cfg.max_iters={MAX_ITERS}", "train_cfg.val_interval=40",
                           "default_hooks.checkpoint.interval=20"))
    return work_dir


@pytest.fixture(scope="module")
def tested(work_dir, tmp_path_factory):
    """``semseg test`` of the last checkpoint with the dumped config, writing overlays and label PNGs."""
    out = tmp_path_factory.mktemp("test")
    run_semseg("test", work_dir / CONFIG.name, work_dir / f"iter_{MAX_ITERS}.pth", "--show-dir", out / "show",
               "--out", out / "labels", "--work-dir", out / "metrics")
    return out


def test_work_dir_holds_config_logs_and_checkpoints(work_dir):
    assert (work_dir / CONFIG.name).is_file()  # the dumped config, named as the one trained
    assert len(list(work_dir.glob("*.log"))) == 1 and len(list(work_dir.glob("*.jsonl"))) == 1
    assert (work_dir / "last_checkpoint").read_text().strip() == str((work_dir / f"iter_{MAX_ITERS}.pth").resolve())
    assert sorted(checkpoints(work_dir)) == [MAX_ITERS - 20, MAX_ITERS]  # max_keep_ckpts=2 dropped 20 and 40
    best = list(work_dir.glob("best_mIoU_iter_*.pth"))
    assert len(best) == 1
    val = {row["iter"]: row["mIoU"] for row in records(work_dir) if row["mode"] == "val"}
    assert best[0].name == f"best_mIoU_iter_{max(val, key=val.get)}.pth"


def test_logs_hold_train_and_val_records(work_dir):
    rows = records(work_dir)
    train = [row for row in rows if row["mode"] == "train"]
    val = [row for row in rows if row["mode"] == "val"]
    assert [row["iter"] for row in train] == list(range(1, MAX_ITERS + 1))  # logger interval 1
    assert all(np.isfinite(row["decode.loss_ce"]) and row["lr"] > 0 for row in train)
    first = np.mean([row["decode.loss_ce"] for row in train[:10]])
    last = np.mean([row["decode.loss_ce"] for row in train[-10:]])
    assert last < 0.7 * first
    assert [row["iter"] for row in val] == [40, MAX_ITERS]
    assert val[-1]["mIoU"] >= LEARNT_MIOU and {"aAcc", "mAcc"} <= set(val[-1])
    text = next(work_dir.glob("*.log")).read_text()
    assert f"Iter(train) [{MAX_ITERS}/{MAX_ITERS}]" in text and f"Iter(val) [{MAX_ITERS}]" in text
    assert "shape_4" in text  # the per-class table


def test_checkpoint_contents(work_dir):
    checkpoint = load(work_dir / f"iter_{MAX_ITERS}.pth")
    assert {"meta", "state_dict", "optimizer", "param_schedulers"} <= set(checkpoint)
    assert checkpoint["meta"]["iter"] == MAX_ITERS
    model = semseg.init_model(work_dir / CONFIG.name, work_dir / f"iter_{MAX_ITERS}.pth")  # strict
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, checkpoint["state_dict"][name]), name


def test_semseg_test_scores_the_learnt_model(work_dir, tested):
    scores = json.loads((tested / "metrics" / "test_metrics.json").read_text())
    assert scores["mIoU"] >= LEARNT_MIOU
    # test and the final validation score the same model on the same 8 images
    val = [row for row in records(work_dir) if row["mode"] == "val"][-1]
    assert scores == {key: val[key] for key in scores}


def test_semseg_test_writes_an_overlay_and_a_label_map_per_image(tested):
    names = [f"{index:05d}.png" for index in range(VAL_IMAGES)]
    assert sorted(path.name for path in (tested / "show").iterdir()) == names
    assert sorted(path.name for path in (tested / "labels").iterdir()) == names
    for index, name in enumerate(names):
        image, truth = generate_sample(index, (128, 128), 5, split="val")
        overlay = cv2.imread(str(tested / "show" / name))
        assert overlay.shape == image.shape and not np.array_equal(overlay, image)
        labels = cv2.imread(str(tested / "labels" / name), cv2.IMREAD_UNCHANGED)
        assert labels.shape == truth.shape and labels.max() < 5
        assert (labels == truth).mean() > 0.6  # the file of image k holds image k's prediction


def test_semseg_test_tta(work_dir, tmp_path):
    run_semseg("test", work_dir / CONFIG.name, work_dir / f"iter_{MAX_ITERS}.pth", "--tta", "--work-dir", tmp_path)
    scores = json.loads((tmp_path / "test_metrics.json").read_text())
    assert scores["mIoU"] >= LEARNT_MIOU
