"""Run logs: text and JSON-lines files, rank-0 only, TensorBoard scalars, progress timing."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from semseg.engine.logging import Progress, RunLogger, format_seconds


class FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter and records what it is given."""

    instances: list[FakeWriter] = []

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.instances.clear()
    return FakeWriter


def test_text_and_json_lines_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = RunLogger(tmp_path, tensorboard=False)
    logger.info("hello")
    logger.record("train", 10, {"lr": 0.01, "decode.loss_ce": torch.tensor(0.5), "bad": float("nan")})
    logger.record("val", 10, {"mIoU": 71.5})
    logger.close()
    assert "hello" in capsys.readouterr().out
    assert "hello" in logger.text_path.read_text()
    rows = [json.loads(line) for line in logger.json_path.read_text().splitlines()]
    assert rows == [{"mode": "train", "iter": 10, "lr": 0.01, "decode.loss_ce": 0.5, "bad": "nan"},
                    {"mode": "val", "iter": 10, "mIoU": 71.5}]


def test_other_ranks_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = RunLogger(tmp_path / "work", enabled=False)
    logger.info("hidden")
    logger.record("train", 1, {"lr": 0.1})
    logger.close()
    assert not (tmp_path / "work").exists()
    assert capsys.readouterr().out == ""


def test_tensorboard_scalars_when_installed(tmp_path: Path, fake_tensorboard) -> None:
    logger = RunLogger(tmp_path)
    logger.record("train", 5, {"lr": 0.01, "decode.loss_ce": 0.7, "note": "text is not a scalar"})
    logger.record("val", 5, {"mIoU": 60.0})
    logger.close()
    (writer,) = fake_tensorboard.instances
    assert Path(writer.log_dir) == tmp_path / "tensorboard"
    assert writer.scalars == [("train/lr", 0.01, 5), ("train/decode.loss_ce", 0.7, 5), ("val/mIoU", 60.0, 5)]
    assert writer.closed


def test_progress_eta_from_iteration_times() -> None:
    progress = Progress(start_iter=10, max_iters=110)
    progress.iter_times = [0.5] * 4  # as if four iterations took half a second each
    progress.iter = 10
    assert progress.time_per_iter == 0.5
    assert progress.eta == format_seconds(50) == "0:00:50"
    progress.mark_data()
    progress.mark_iter()
    assert progress.iter == 11 and len(progress.iter_times) == 5
