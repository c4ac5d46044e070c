"""The ``semseg`` command, run in-process through ``semseg.cli.main`` (and once as ``python -m semseg.cli``):
zoo listing, predict's output files, test with and without ``--tta``, and errors that name the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

import semseg
from semseg.cli import main
from semseg.data.datasets.synthetic import generate_sample
from semseg.data.transforms.loading import read_label_map
from semseg.engine.checkpoint import save_checkpoint

SYNTHETIC = "fcn_r18-d8_1xb8-600_synthetic-96x96"
FEW = "test_dataloader.dataset.num_samples=3"  # the synthetic test set cut to 3 images


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint of the synthetic model (fresh random weights) and a 70x90 synthetic image."""
    root = tmp_path_factory.mktemp("cli")
    model = semseg.init_model(SYNTHETIC)
    ckpt = root / "model.pth"
    save_checkpoint({"state_dict": model.state_dict(), "meta": {}}, ckpt)
    image, _ = generate_sample(0, (70, 90))
    path = root / "img.png"
    assert cv2.imwrite(str(path), image)
    return {"ckpt": ckpt, "image": path}


def test_zoo_lists_matching_names(capsys) -> None:
    assert main(["zoo", "deeplabv3plus*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("deeplabv3plus") for line in lines)
    assert [line.split()[0] for line in lines] == semseg.list_models("deeplabv3plus*")


def test_zoo_unknown_pattern_fails(capsys) -> None:
    assert main(["zoo", "no_such_model*"]) != 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_predict_writes_labels_and_overlay(files, tmp_path: Path, capsys, tta: bool) -> None:
    out = tmp_path / "out"
    assert (
        main(
            ["predict", SYNTHETIC, str(files["ckpt"]), str(files["image"]), "--out", str(out)]
            + (["--tta"] if tta else [])
        )
        == 0
    )
    labels = read_label_map(out / "labels" / "img.png")  # a palette PNG: its indices are the labels
    overlay = cv2.imread(str(out / "overlays" / "img.png"))
    assert labels.shape == (70, 90) and overlay.shape == (70, 90, 3)
    model = semseg.init_model(SYNTHETIC, checkpoint=files["ckpt"])
    expected = semseg.inference_model(model, files["image"], tta=tta).labels
    assert (labels == expected).all()
    assert "1 image -> " in capsys.readouterr().out


def test_test_tta_writes_predictions_of_the_averaged_views(files, tmp_path: Path, capsys) -> None:
    """``semseg test --tta`` predicts each test image as ``inference_model(..., tta=True)`` does."""
    out, work = tmp_path / "labels", tmp_path / "work"
    assert (
        main(
            [
                "test",
                SYNTHETIC,
                str(files["ckpt"]),
                "--tta",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--work-dir",
                str(work),
                "--cfg-options",
                FEW,
            ]
        )
        == 0
    )
    assert "mIoU" in capsys.readouterr().out
    metrics = json.loads((work / "test_metrics.json").read_text())
    assert set(metrics) >= {"aAcc", "mIoU", "mAcc"}
    model = semseg.init_model(SYNTHETIC, checkpoint=files["ckpt"])
    for index in range(3):
        image, _ = generate_sample(index, (128, 128), split="val")
        written = cv2.imread(str(out / f"{index:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert (written == semseg.inference_model(model, image, tta=True).labels).all()


def fails_with(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    """The command exits 1 with a one-line ``semseg: error: ...`` naming ``message``, no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("semseg: error: ") and message in err and "Traceback" not in err


def test_misspelt_config_lists_nearest_zoo_names(
    files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fails_with(
        capsys,
        [
            "predict",
            "fcn_r18-d8_1xb8-600_synthetc-96x96",
            str(files["ckpt"]),
            str(files["image"]),
            "--out",
            str(tmp_path),
        ],
        f"nearest zoo configs: {SYNTHETIC}",
    )


def test_misspelt_cfg_option_names_the_key(files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails_with(
        capsys,
        [
            "predict",
            SYNTHETIC,
            str(files["ckpt"]),
            str(files["image"]),
            "--out",
            str(tmp_path),
            "--cfg-options",
            "model.decode_hed.num_classes=3",
        ],
        "no key 'decode_hed' in model; did you mean 'decode_head'",
    )


def test_unknown_head_type_suggests_the_nearest(
    files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fails_with(
        capsys,
        [
            "predict",
            SYNTHETIC,
            str(files["ckpt"]),
            str(files["image"]),
            "--out",
            str(tmp_path),
            "--cfg-options",
            "model.decode_head.type=FCNHaed",
        ],
        "did you mean 'FCNHead'",
    )
    assert not list(tmp_path.iterdir())  # nothing written


def test_test_tta_without_tta_pipeline_says_so(files, capsys: pytest.CaptureFixture[str]) -> None:
    fails_with(
        capsys,
        [
            "test",
            SYNTHETIC,
            str(files["ckpt"]),
            "--tta",
            "--device",
            "cpu",
            "--cfg-options",
            "tta_pipeline=None",
            FEW,
        ],
        "--tta needs the config's tta_pipeline",
    )


def test_predict_tta_without_tta_pipeline_says_so(
    files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fails_with(
        capsys,
        [
            "predict",
            SYNTHETIC,
            str(files["ckpt"]),
            str(files["image"]),
            "--out",
            str(tmp_path),
            "--tta",
            "--cfg-options",
            "tta_pipeline=None",
        ],
        "needs the config's tta_pipeline",
    )


def test_cfg_options_set_a_list_of_dicts(files, tmp_path: Path) -> None:
    """A pipeline step list given on the command line replaces the config's: one scale, no flip, is
    plain single-view inference at the image's own size."""
    out = tmp_path / "out"
    one_view = (
        "tta_pipeline.1.transforms.0=[{'type':'Resize','scale_factor':1.0,'keep_ratio':True}]",
        "tta_pipeline.1.transforms.1=[{'type':'RandomFlip','prob':0.0}]",
    )
    assert (
        main(
            [
                "predict",
                SYNTHETIC,
                str(files["ckpt"]),
                str(files["image"]),
                "--out",
                str(out),
                "--tta",
                "--cfg-options",
                *one_view,
            ]
        )
        == 0
    )
    model = semseg.init_model(SYNTHETIC, checkpoint=files["ckpt"], cfg_options=list(one_view))
    assert model.cfg.tta_pipeline[1]["transforms"][0] == [
        dict(type="Resize", scale_factor=1.0, keep_ratio=True)
    ]
    plain = semseg.init_model(
        SYNTHETIC,
        checkpoint=files["ckpt"],
        cfg_options={
            "test_pipeline.1": dict(type="Resize", scale_factor=1.0, keep_ratio=True, _delete_=True)
        },
    )
    expected = semseg.inference_model(plain, files["image"]).labels
    assert (read_label_map(out / "labels" / "img.png") == expected).all()


def test_module_entry_point_help_and_error_exit() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "semseg", "--help"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0
    assert all(command in ok.stdout for command in ("train", "test", "predict", "zoo"))
    version = subprocess.run([sys.executable, "-m", "semseg", "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.startswith(f"semseg {semseg.__version__} (torch ")
    bad = subprocess.run(
        [sys.executable, "-m", "semseg.cli", "zoo", "no_such_model*"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "0 models" in bad.stderr


def test_unknown_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predcit"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_benchmark_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["benchmark", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--checkpoint", "--train", "--flops", "--num-images", "--warmup", "--repeat", "--shape",
                   "--batch-size", "--crop-size", "--precision", "--amp", "--fuse", "--channels-last", "--compile",
                   "--cudnn-benchmark", "--json", "--cfg-options"):
        assert option in out


def test_predict_in_bf16_with_fused_batchnorm(files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["predict", SYNTHETIC, str(files["ckpt"]), str(files["image"]), "--out", str(out)]
    assert main([*args, "--precision", "bf16", "--fuse"]) == 0
    labels = read_label_map(out / "labels" / "img.png")
    model = semseg.init_model(SYNTHETIC, checkpoint=files["ckpt"], precision="bf16", fuse=True)
    assert model.precision == "bf16"
    assert (labels == semseg.inference_model(model, files["image"]).labels).all()


def test_fp16_on_the_cpu_is_one_clear_error(files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["predict", SYNTHETIC, str(files["ckpt"]), str(files["image"]), "--out", str(tmp_path)]
    assert main([*args, "--precision", "fp16"]) == 1
    assert "fp16" in capsys.readouterr().err


def test_train_speed_flags_reach_the_trainer(monkeypatch, tmp_path: Path) -> None:
    seen = {}

    class FakeTrainer:
        def __init__(self, cfg, work_dir, **kwargs):
            seen.update(kwargs)

        def train(self) -> None:
            pass

    monkeypatch.setattr("semseg.engine.trainer.Trainer", FakeTrainer)
    args = ["train", SYNTHETIC, "--work-dir", str(tmp_path), "--channels-last", "--fused-optimizer",
            "--check-finite-every", "10", "--compile-mode", "max-autotune"]
    assert main(args) == 0
    assert seen["channels_last"] and seen["fused_optimizer"] and seen["check_finite_every"] == 10
    assert seen["compile"] == {"mode": "max-autotune"}
