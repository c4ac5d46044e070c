"""Looking at data and runs: ``semseg browse-dataset``, ``plot-log``, ``config`` and ``test --confusion-matrix``
on a tiny synthetic model trained for 4 iterations; the confusion counts against a naive count and IoUMetric;
the error naming the ``vis`` extra when matplotlib is missing."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semseg.cli import browse_dataset, config, plot_log, test
from semseg.cli.browse_dataset import CHECKER, GAP, checkerboard, draw_sample
from semseg.config import Config, load_config
from semseg.engine.trainer import Trainer
from semseg.evaluation import ConfusionMatrix, IoUMetric, confusion_counts
from semseg.plots import read_run_log

SYNTHETIC = "fcn_r18-d8_1xb8-600_synthetic-96x96"
# the synthetic FCN at a tiny width (ResNet-18 stages of 4, 8, 16, 32 channels)
TINY_MODEL = {
    "model.backbone.stem_channels": 8, "model.backbone.base_channels": 4,
    "model.decode_head.in_channels": 32, "model.decode_head.channels": 8,
    "model.auxiliary_head.in_channels": 16, "model.auxiliary_head.channels": 8,
}
TINY_RUN = {
    **TINY_MODEL, "train_cfg.max_iters": 4, "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 4,
    "default_hooks.logger.interval": 1, "train_dataloader.batch_size": 2,
    "train_dataloader.dataset.num_samples": 4, "val_dataloader.dataset.num_samples": 2,
    "param_scheduler.0.end": 2, "param_scheduler.1.begin": 2, "param_scheduler.1.end": 4,
}


def parse(module, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by a parser holding only ``module``'s subcommand."""
    parser = argparse.ArgumentParser(prog="semseg")
    module.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def as_options(options: dict) -> list[str]:
    return [f"{key}={value}" for key, value in options.items()]


def read_png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real work dir: the tiny synthetic model trained for 4 iterations (log every iteration, val at 2, 4)."""
    torch.set_num_threads(1)
    work_dir = tmp_path_factory.mktemp("run")
    Trainer(load_config(SYNTHETIC, TINY_RUN), work_dir, device="cpu").train()
    return work_dir


# ------------------------------------------------------------------------------------------------ plot-log


def test_plot_log_draws_loss_lr_and_miou_of_a_real_run(run_dir: Path, capsys) -> None:
    records = read_run_log(run_dir)
    assert [row["iter"] for row in records["train"]] == [1, 2, 3, 4]
    assert [row["iter"] for row in records["val"]] == [2, 4]
    first = records["train"][0]
    assert first["loss"] == pytest.approx(first["decode.loss_ce"] + first["aux.loss_ce"])  # the summed terms
    assert plot_log.run(parse(plot_log, ["plot-log", str(run_dir)])) == 0
    image = read_png(run_dir / "curves.png")
    assert image.shape[1] == 800 and image.shape[0] > 600  # three panels of 8 in x 2.4 in at 100 dpi
    assert "loss, lr, mIoU plotted" in capsys.readouterr().out


def test_plot_log_compares_runs_on_chosen_keys(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "compare.png"
    args = parse(plot_log, ["plot-log", str(run_dir), str(run_dir), "--keys", "decode.loss_ce", "mAcc",
                            "--out", str(out)])
    assert plot_log.run(args) == 0
    image = read_png(out)
    assert image.shape[0] < 600  # two panels


def test_plot_log_unknown_key_lists_the_logged_ones(run_dir: Path, tmp_path: Path) -> None:
    args = parse(plot_log, ["plot-log", str(run_dir), "--keys", "mIOU", "--out", str(tmp_path / "x.png")])
    with pytest.raises(KeyError, match="no 'mIOU'.*logged keys:.*mIoU"):
        plot_log.run(args)


def write_log(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_resumed_run_logs_are_joined_and_defaults_skip_what_is_missing(tmp_path: Path, capsys) -> None:
    write_log(tmp_path / "20250101_000000.jsonl", [
        {"mode": "train", "iter": i, "lr": 0.1, "decode.loss_ce": 1.0 / i} for i in (10, 20, 30)])
    # resumed from iteration 20: the old record of iteration 30 is replaced; NaN is logged as a string
    write_log(tmp_path / "20250101_010000.jsonl", [
        {"mode": "train", "iter": 30, "lr": 0.05, "decode.loss_ce": "nan"},
        {"mode": "train", "iter": 40, "lr": 0.05, "decode.loss_ce": 0.2}])
    records = read_run_log(tmp_path)
    assert [row["iter"] for row in records["train"]] == [10, 20, 30, 40]
    assert records["train"][2]["lr"] == 0.05 and math.isnan(records["train"][2]["loss"])
    assert plot_log.run(parse(plot_log, ["plot-log", str(tmp_path)])) == 0
    read_png(tmp_path / "curves.png")
    captured = capsys.readouterr()
    assert "not in the log, not plotted: mIoU" in captured.err and "loss, lr plotted" in captured.out


def test_mmsegmentation_scalars_json_is_read(tmp_path: Path) -> None:
    write_log(tmp_path / "20240101_000000" / "vis_data" / "scalars.json", [
        {"lr": 0.01, "loss": 2.5, "decode.loss_ce": 2.0, "iter": 50, "step": 50},
        {"aAcc": 80.0, "mIoU": 40.0, "mAcc": 50.0, "step": 50}])
    records = read_run_log(tmp_path)
    assert records == {"train": [{"iter": 50, "lr": 0.01, "loss": 2.5, "decode.loss_ce": 2.0}],
                       "val": [{"iter": 50, "aAcc": 80.0, "mIoU": 40.0, "mAcc": 50.0}]}


def test_plot_log_without_a_log_names_what_it_looks_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no JSON-lines log"):
        plot_log.run(parse(plot_log, ["plot-log", str(tmp_path)]))
    (tmp_path / "bad.jsonl").write_text('{"mode": "train", "iter": 1}\n{"mode": \n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):
        read_run_log(tmp_path)


def hide_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``import matplotlib...`` fail, as on an installation without it."""
    for name in [name for name in sys.modules if name.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_matplotlib_names_the_extra(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    hide_matplotlib(monkeypatch)
    with pytest.raises(ImportError, match=r"plot-log needs matplotlib.*pip install 'semseg\[vis\]'"):
        plot_log.run(parse(plot_log, ["plot-log", str(run_dir), "--out", str(tmp_path / "c.png")]))
    # test --confusion-matrix fails before the evaluation, not after it
    args = parse(test, ["test", SYNTHETIC, str(run_dir / "iter_4.pth"), "--device", "cpu",
                        "--confusion-matrix", str(tmp_path / "cm.png"), "--cfg-options", *as_options(TINY_MODEL)])
    with pytest.raises(ImportError, match=r"--confusion-matrix needs matplotlib.*semseg\[vis\]"):
        test.run(args)
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------------- confusion matrix


def naive_confusion(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore: int) -> np.ndarray:
    counts = np.zeros((num_classes, num_classes), np.int64)
    for p, t in zip(pred.ravel(), label.ravel(), strict=True):
        if t != ignore and 0 <= t < num_classes and 0 <= p < num_classes:
            counts[t, p] += 1
    return counts


def test_confusion_counts_match_a_naive_count_and_iou_metric() -> None:
    generator = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 4, (2, 13, 17), generator=generator)
    labels = torch.randint(0, 5, (2, 13, 17), generator=generator)  # 4 is outside the 4 classes
    labels[:, :3] = 255
    matrix = ConfusionMatrix(4)
    matrix.process(preds, labels)
    expected = sum(naive_confusion(p.numpy(), t.numpy(), 4, 255) for p, t in zip(preds, labels, strict=True))
    assert np.array_equal(matrix.counts.numpy(), expected)
    # with every label a class or ignored, the matrix holds IoUMetric's four counts (IoUMetric also counts
    # the predictions at pixels labelled outside the classes, which have no row here)
    labels[labels == 4] = 255
    matrix, metric = ConfusionMatrix(4), IoUMetric([f"c{i}" for i in range(4)])
    matrix.process(preds, labels)
    metric.process(preds, labels)
    counts = matrix.counts
    intersect, union, pred_area, label_area = metric.counts
    assert torch.equal(counts.diagonal(), intersect)
    assert torch.equal(counts.sum(1), label_area) and torch.equal(counts.sum(0), pred_area)
    assert torch.equal(counts.sum(1) + counts.sum(0) - counts.diagonal(), union)
    assert torch.allclose(matrix.normalized().sum(1), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="differs from label shape"):
        confusion_counts(preds[0], labels[0, :5], 4)


def test_normalized_rows_of_an_absent_class_are_nan() -> None:
    matrix = ConfusionMatrix(3)
    matrix.process([torch.tensor([[0, 1], [1, 1]])], [torch.tensor([[0, 0], [1, 1]])])
    rows = matrix.normalized()
    assert torch.equal(rows[:2], torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64))
    assert torch.isnan(rows[2]).all()


def test_test_writes_the_confusion_matrix_plot_and_counts(run_dir: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "cm" / "confusion.png"
    args = parse(test, ["test", SYNTHETIC, str(run_dir / "iter_4.pth"), "--device", "cpu", "--confusion-matrix",
                        str(out), "--work-dir", str(tmp_path), "--cfg-options", *as_options(TINY_MODEL),
                        "test_dataloader.dataset.num_samples=3"])
    assert test.run(args) == 0
    assert f"confusion matrix: {out}" in capsys.readouterr().out
    image = read_png(out)
    assert min(image.shape[:2]) > 300
    counts = np.load(out.with_suffix(".npy"))
    assert counts.shape == (5, 5) and counts.dtype == np.int64
    assert counts.sum() == 3 * 128 * 128  # every pixel of the 3 test images (no ignore label)
    rows = counts / counts.sum(1, keepdims=True)
    assert np.allclose(rows.sum(1), 1.0)  # every class is in every synthetic image
    lines = out.with_suffix(".csv").read_text().splitlines()
    assert lines[0] == "label \\ prediction,background,shape_1,shape_2,shape_3,shape_4"
    assert [int(v) for v in lines[1].split(",")[1:]] == counts[0].tolist()
    # the metrics the same run reported agree with the matrix
    iou = np.diag(counts) / (counts.sum(0) + counts.sum(1) - np.diag(counts))
    reported = json.loads((tmp_path / "test_metrics.json").read_text())
    assert reported["mIoU"] == round(float(np.nanmean(iou)) * 100, 2)


def test_confusion_matrix_file_must_be_the_plot(run_dir: Path, tmp_path: Path) -> None:
    from semseg.plots import save_confusion_matrix

    with pytest.raises(ValueError, match="the counts are written beside it"):
        save_confusion_matrix(np.eye(2, dtype=np.int64), ["a", "b"], tmp_path / "cm.csv")
    written = save_confusion_matrix(np.eye(2, dtype=np.int64), ["a", "b"], tmp_path / "cm")
    assert [path.name for path in written] == ["cm.png", "cm.npy", "cm.csv"]
    read_png(written[0])


# ------------------------------------------------------------------------------------------------ config


def test_config_prints_text_that_loads_back_to_the_same_config(tmp_path: Path, capsys) -> None:
    options = ["model.decode_head.num_classes=3", "crop_size=(64,80)"]
    assert config.run(parse(config, ["config", SYNTHETIC, "--cfg-options", *options])) == 0
    printed = tmp_path / "printed.py"
    printed.write_text(capsys.readouterr().out)
    resolved = load_config(SYNTHETIC, options)
    assert Config.fromfile(printed).to_dict() == resolved.to_dict()
    assert resolved.model.decode_head.num_classes == 3 and resolved.crop_size == (64, 80)
    assert config.run(parse(config, ["config", "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024",
                                     "--out", str(tmp_path / "psp.py")])) == 0
    assert Config.fromfile(tmp_path / "psp.py").to_dict() == \
        load_config("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024").to_dict()


def test_config_unknown_option_is_reported(capsys) -> None:
    with pytest.raises(KeyError, match="did you mean 'decode_head'"):
        config.run(parse(config, ["config", SYNTHETIC, "--cfg-options", "model.decode_heat.num_classes=3"]))


# ------------------------------------------------------------------------------------------ browse-dataset


def test_draw_sample_colors_classes_and_marks_ignore() -> None:
    image = np.full((13, 17, 3), 100, np.uint8)
    labels = np.zeros((13, 17), np.int64)
    labels[:, 9:] = 1
    labels[8:, :] = 255
    palette = np.array([[10, 20, 30], [200, 150, 100]], np.uint8)
    picture = draw_sample(image, labels, palette, ["road", "car"], opacity=0.5)
    assert picture.shape[1] >= 3 * 17 + 2 * GAP and picture.shape[0] > 13
    colors = picture[:13, 17 + GAP:2 * 17 + GAP]
    assert (colors[:8, :9] == [10, 20, 30]).all() and (colors[:8, 9:] == [200, 150, 100]).all()
    assert np.array_equal(colors[8:], checkerboard(13, 17)[8:])  # ignore: black and white squares
    assert set(np.unique(colors[8:])) == {0, 255} and CHECKER < 5
    overlay = picture[:13, 2 * (17 + GAP):3 * 17 + 2 * GAP]
    assert (overlay[:8, :9] == [55, 60, 65]).all()
    legend = picture[13:]
    assert (legend < 128).any()  # the names are written
    assert np.array_equal(draw_sample(image, None, palette, ["road", "car"]), image)


def test_browse_dataset_writes_samples_after_the_pipeline(tmp_path: Path, capsys) -> None:
    # the preprocessor pads the 96x96 training crops to 112x100: the padding is ignore (checkerboard)
    out = tmp_path / "browse"
    args_list = ["browse-dataset", SYNTHETIC, "--num", "2", "--cfg-options", "model.data_preprocessor.size=(112,100)"]
    assert browse_dataset.run(parse(browse_dataset, [*args_list, "--out", str(out)])) == 0
    assert "2 train samples" in capsys.readouterr().out
    files = sorted(out.glob("*.png"))
    assert [path.name for path in files] == ["00000.png", "00001.png"]
    for path in files:
        picture = read_png(path)
        assert picture.shape[1] == 3 * 100 + 2 * GAP and picture.shape[0] > 112
        labels_panel = picture[:112, 100 + GAP:200 + GAP]
        assert np.array_equal(labels_panel[96:112], checkerboard(112, 100)[96:112])
        assert np.array_equal(labels_panel[:96, 96:], checkerboard(112, 100)[:96, 96:])
        image_panel = picture[:96, :96].reshape(-1, 3)
        assert len(np.unique(image_panel, axis=0)) > 100  # a real (denormalized) image, not a flat fill
    again = tmp_path / "again"
    assert browse_dataset.run(parse(browse_dataset, [*args_list, "--out", str(again)])) == 0
    assert (again / "00000.png").read_bytes() == files[0].read_bytes()  # the seed fixes the augmentations
    with pytest.raises(ValueError, match="--num must be >= 1"):
        browse_dataset.run(parse(browse_dataset, [*args_list, "--num", "0"]))


def test_browse_dataset_val_phase(tmp_path: Path) -> None:
    out = tmp_path / "val"
    args = parse(browse_dataset, ["browse-dataset", SYNTHETIC, "--phase", "val", "--out", str(out), "--num", "1"])
    assert browse_dataset.run(args) == 0
    picture = read_png(out / "00000.png")
    assert picture.shape[1] == 3 * 128 + 2 * GAP  # the test pipeline's 128x128 resize, no padding
    with pytest.raises(KeyError, match="has no train_dataloader"):
        browse_dataset.run(parse(browse_dataset, ["browse-dataset", SYNTHETIC, "--out", str(out),
                                                  "--cfg-options", "train_dataloader=None"]))


# --------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("module", [browse_dataset, plot_log, config, test], ids=lambda m: m.__name__)
def test_help_has_examples_and_describes_every_argument(module) -> None:
    parser = argparse.ArgumentParser(prog="semseg")
    commands = parser.add_subparsers()
    module.register(commands)
    (sub,) = commands.choices.values()
    assert sub.epilog.startswith("examples:\n  semseg ")
    assert sub.formatter_class is argparse.RawDescriptionHelpFormatter
    undocumented = [action.dest for action in sub._actions if not action.help and action.dest != "help"]
    assert not undocumented
