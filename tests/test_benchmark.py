"""``semseg benchmark``: inference, ``--train`` and ``--flops`` on the tiny synthetic config print their
figures, ``--json`` parses, ``--repeat`` gives a spread, the image source and sizes follow the config, the
distributed figure names every rank, and bad options fail in one line. Nothing here asserts a speed."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import semseg
from semseg import benchmark
from semseg.benchmark import (
    Spread,
    config_crop_size,
    config_images,
    config_test_size,
    measure_complexity,
    run_benchmark,
)
from semseg.cli import ConsoleProgress, main
from semseg.config import load_config
from semseg.engine.checkpoint import save_checkpoint
from semseg.models.inference import slide_windows

SYNTHETIC = "fcn_r18-d8_1xb8-600_synthetic-96x96"
SLIDE = ["model.test_cfg.mode=slide", "model.test_cfg.crop_size=(32,32)", "model.test_cfg.stride=(24,24)"]
QUICK = ["--device", "cpu", "--warmup", "1", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert main(["benchmark", SYNTHETIC, *argv]) == 0
    return capsys.readouterr().out.splitlines()


def line(lines: list[str], start: str) -> str:
    found = [text for text in lines if text.startswith(start)]
    assert len(found) == 1, f"no single line starting with {start!r} in {lines}"
    return found[0]


def test_inference_prints_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On the config's own test set (the synthetic set is generated, so it always 'exists'), loading a
    checkpoint; the JSON holds the same figures."""
    ckpt = tmp_path / "model.pth"
    save_checkpoint({"state_dict": semseg.init_model(SYNTHETIC).state_dict(), "meta": {}}, ckpt)
    lines = run(capsys, [*QUICK, "--num-images", "2", "--checkpoint", str(ckpt), "--json",
                         str(tmp_path / "b.json"), "--cfg-options", "test_dataloader.dataset.num_samples=2"])
    assert line(lines, "inference: ") == "inference: whole, fp32"
    assert "the config's test set (SyntheticDataset, 2 images)" in line(lines, "images: ")
    time_line = line(lines, "time: ")
    assert " s/image, " in time_line and " images/s " in time_line and "(1 run)" in time_line
    assert "ru_maxrss" in line(lines, "peak memory: ") and "never decreases" in line(lines, "peak memory: ")
    assert "cudnn.benchmark off" in line(lines, "device: cpu")
    data = json.loads((tmp_path / "b.json").read_text())
    result = data["inference"]
    assert result["num_images"] == 2 and result["synthetic"] is False
    assert result["input_shapes"] == [[128, 128]]  # the test pipeline's Resize scale
    assert result["images_per_second"] == pytest.approx(1 / result["seconds_per_image"]["mean"])
    assert result["memory"]["kind"] == "process" and result["memory"]["peak_mib"] > 0
    assert data["train"] is None and data["complexity"] is None
    assert data["options"]["checkpoint"] == str(ckpt)


def test_repeat_gives_a_spread_over_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys, [*QUICK, "--num-images", "1", "--repeat", "3", "--shape", "33", "47",
                         "--json", str(tmp_path / "b.json")])
    assert "mean of 3 runs; min " in line(lines, "time: ")
    assert "synthetic 33x47 (--shape)" in line(lines, "images: ")
    result = json.loads((tmp_path / "b.json").read_text())["inference"]
    spread = result["seconds_per_image"]
    assert len(spread["values"]) == 3
    assert spread["min"] <= spread["mean"] <= spread["max"] and spread["std"] >= 0
    assert result["synthetic"] is True and result["input_shapes"] == [[33, 47]]


def test_slide_inference_with_batched_crops(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys, [*QUICK, "--num-images", "1", "--shape", "50", "70", "--batch-size", "4",
                         "--cfg-options", *SLIDE])
    assert line(lines, "inference: ") == "inference: slide (crop 32x32, stride 24x24, 4 crops per forward), fp32"


def test_missing_test_set_falls_back_to_synthetic_images_of_the_test_size() -> None:
    cfg = load_config(SYNTHETIC)
    cfg.merge_from_dict({"test_dataloader": {"dataset": {
        "_delete_": True, "type": "ADE20KDataset", "data_root": "/nonexistent/ade",
        "data_prefix": {"img_path": "images/validation", "seg_map_path": "annotations/validation"},
        "pipeline": cfg.to_dict()["test_pipeline"]}}})
    source = config_images(cfg)
    assert source.synthetic
    assert source.description.startswith("synthetic 128x128 (the config's test size; no test set on disk: ")
    assert "/nonexistent/ade" in source.description
    image, meta = source.load(3)
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8 and meta["ori_shape"] == (128, 128)
    assert torch.equal(image, source.load(3)[0])  # image i is always the same


def test_sizes_read_from_a_zoo_config() -> None:
    cfg = load_config("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024")
    assert config_test_size(cfg) == (1024, 2048)  # Resize scale=(2048, 1024) is (W, H)
    assert config_crop_size(cfg) == (512, 1024)  # RandomCrop crop_size is (H, W)


def test_train_prints_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys, [*QUICK, "--train", "--iters", "2", "--repeat", "2", "--batch-size", "2",
                         "--crop-size", "32", "40", "--json", str(tmp_path / "t.json")])
    assert line(lines, "train: ") == "train: batch 2, crop 32x40, fp32, SGD, 1 process(es)"
    assert "mean of 2 runs" in line(lines, "time: ") and " s/iter over 2 iterations" in line(lines, "time: ")
    assert line(lines, "warm-up: ").startswith("warm-up: 1 iterations, ")
    assert "ru_maxrss" in line(lines, "peak memory: ")
    result = json.loads((tmp_path / "t.json").read_text())["train"]
    assert len(result["seconds_per_iter"]["values"]) == 2 and result["world_size"] == 1
    assert result["rank_seconds_per_iter"] == [pytest.approx(result["seconds_per_iter"]["mean"])]


def test_train_bf16_autocast_with_the_configs_batch() -> None:
    report = run_benchmark(SYNTHETIC, device="cpu", train=True, amp="bf16", iters=1, warmup=0,
                           cfg_options=["train_dataloader.batch_size=2", "crop_size=(24,24)",
                                        "train_pipeline.3.crop_size=(24,24)"])
    assert report.train.amp == "bf16" and report.train.batch_size == 2 and report.train.crop_size == (24, 24)


def test_flops_counts_and_gives_achieved_gflops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from semseg.flops import model_complexity

    lines = run(capsys, [*QUICK, "--flops", "--num-images", "1", "--shape", "40", "56",
                         "--json", str(tmp_path / "f.json")])
    expected = model_complexity(semseg.init_model(SYNTHETIC), torch.zeros(1, 3, 40, 56))
    data = json.loads((tmp_path / "f.json").read_text())
    counted, inference = data["complexity"], data["inference"]
    assert counted["params"] == expected.params and counted["flops_per_image"] == expected.flops > 0
    assert counted["convention"] == expected.mac_convention_note()
    seconds = inference["seconds_per_image"]["mean"]
    assert inference["gflops_per_second"] == pytest.approx(expected.flops / seconds / 1e9)
    assert line(lines, "params: ").startswith("params: ")
    assert "per 40x56 image" in line(lines, "flops: ")
    assert line(lines, "flop convention: ") == f"flop convention: {expected.mac_convention_note()}"
    assert "GFLOP/s" in line(lines, "achieved: ")


def test_flops_only_counts_every_slide_crop(capsys: pytest.CaptureFixture[str]) -> None:
    from semseg.flops import model_complexity

    lines = run(capsys, ["--device", "cpu", "--flops", "--num-images", "0", "--shape", "50", "70",
                         "--cfg-options", *SLIDE])
    crops = len(slide_windows(50, 70, (32, 32), (24, 24)))
    per_crop = model_complexity(semseg.init_model(SYNTHETIC), torch.zeros(1, 3, 32, 32)).flops
    assert crops == 6
    assert not any(text.startswith(("time: ", "inference: ", "achieved: ")) for text in lines)
    assert "per 32x32 crop, 6 crops per 50x70 image" in line(lines, "flops: ")
    model = semseg.init_model(SYNTHETIC, cfg_options=SLIDE)
    result = measure_complexity(model, (50, 70))
    assert result.forwards_per_image == 6 and result.flops_per_forward == per_crop
    assert result.flops_per_image == 6 * per_crop
    assert measure_complexity(model, (20, 30)).forward_shape == (20, 30)  # the crop clipped to the image


def test_distributed_figures_name_every_rank_and_the_slowest(monkeypatch: pytest.MonkeyPatch) -> None:
    """What rank 0 reports from the ranks' gathered figures (a second, slower rank stood in for)."""
    monkeypatch.setattr(benchmark.distributed, "all_gather_object",
                        lambda mine: [mine, ([run * 3 for run in mine[0]], mine[1] + 100.0)])
    report = run_benchmark(SYNTHETIC, device="cpu", train=True, iters=1, warmup=0, repeat=2, batch_size=1,
                           crop_size=(16, 16))
    result = report.train
    assert result.world_size == 2 and result.slowest_rank == 1
    assert result.rank_seconds_per_iter[1] == pytest.approx(3 * result.rank_seconds_per_iter[0])
    assert result.seconds_per_iter.mean == pytest.approx(result.rank_seconds_per_iter[1])
    from semseg.cli import benchmark_lines

    lines = benchmark_lines(report)
    assert "slowest: rank 1" in line(lines, "ranks (s/iter): rank 0: ")
    assert "the largest over ranks" in line(lines, "peak memory: ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_report_each_rank_once(tmp_path: Path) -> None:
    """Two CPU processes with torchrun's environment (Gloo; started directly, without the launcher, to stay
    fast): one report, from rank 0, with both ranks' figures."""
    command = [sys.executable, "-m", "semseg.cli", "benchmark", SYNTHETIC, "--train", "--iters", "1",
               "--warmup", "0", "--batch-size", "1", "--crop-size", "16", "16", "--device", "cpu",
               "--json", str(tmp_path / "d.json")]
    base = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port())}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=Path(__file__).parents[1],
                                env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)})
               for rank in range(2)]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
    (out0, err0), (out1, err1) = outputs
    assert out0.count("config: ") == 1 and "ranks (s/iter): rank 0: " in out0 and out1 == ""
    assert "train: 1/1" in err0 and "train: 1/1" not in err1  # progress on rank 0 only
    result = json.loads((tmp_path / "d.json").read_text())["train"]
    assert result["world_size"] == 2 and len(result["rank_seconds_per_iter"]) == 2


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = ConsoleProgress("inference", stream=stream, width=10)
        for done in range(21):
            progress(done, 20)
    assert terminal.getvalue().count("\r") == 20 and terminal.getvalue().endswith("\n")
    assert "\rinference [##########] 20/20 " in terminal.getvalue()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("inference: 20/20 ") and "eta" in lines[-1]


def test_spread() -> None:
    spread = Spread.of([1.0, 2.0, 4.0])
    assert (spread.mean, spread.min, spread.max) == (pytest.approx(7 / 3), 1.0, 4.0)
    assert spread.std == pytest.approx(1.5275, abs=1e-4)
    assert Spread.of([2.0]).std == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train", "--amp", "fp16"], "--amp fp16 needs a CUDA device; on the CPU use --amp bf16"),
        (["--precision", "fp16"], "--precision fp16 needs a CUDA device"),
        (["--amp", "bf16"], "--amp applies to --train"),
        (["--crop-size", "8", "8"], "--crop-size applies to --train"),
        (["--train", "--fuse"], "--fuse is an inference option"),
        (["--train", "--precision", "bf16", "--amp", "fp16"], "disagree"),
        (["--repeat", "0"], "--repeat must be at least 1, got 0"),
        (["--num-images", "0"], "--num-images 0 measures nothing"),
        (["--shape", "0", "5"], "--shape must be positive, got 0 5"),
        (["--compile", "--warmup", "0"], "--warmup must be at least 1 (the first call compiles), got 0"),
        (["--cfg-options", "model.decode_hed.num_classes=3"], "did you mean 'decode_head'"),
    ],
    ids=["amp-fp16-cpu", "precision-fp16-cpu", "amp-without-train", "crop-without-train", "fuse-train",
         "precision-vs-amp", "repeat", "nothing", "shape", "compile-without-warmup", "cfg-option"],
)
def test_bad_options_fail_in_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["benchmark", SYNTHETIC, "--device", "cpu", "--num-images", "1", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("semseg: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", SYNTHETIC, "--device", "cuda"]) == 1
    assert "CUDA is not available here" in capsys.readouterr().err
