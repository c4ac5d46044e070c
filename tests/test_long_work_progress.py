"""Progress of long commands: ``semseg test`` (a bar with rate and ETA on a terminal, a line at every tenth
elsewhere) and ``semseg export`` (the step running and the time so far)."""

from __future__ import annotations

import io
import re
import warnings

import pytest
import torch

import semseg
from semseg.cli.export import StepDisplay
from semseg.engine.testing import run_test

CONFIG = "fcn_r18-d8_1xb8-600_synthetic-96x96"
TINY = {"model.backbone.stem_channels": 8, "model.backbone.base_channels": 4,
        "model.decode_head.in_channels": 32, "model.decode_head.channels": 8, "model.auxiliary_head": None,
        "test_dataloader.dataset.num_samples": 3, "test_dataloader.dataset.img_size": (40, 40)}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_test_shows_images_done_with_rate_and_eta(tty: bool, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    torch.set_num_threads(1)
    stream = Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, on purpose
        run_test(CONFIG, None, cfg_options=TINY, device="cpu")
    shown = stream.getvalue()
    if tty:  # one line redrawn in place, ended once
        assert shown.count("\r") == 3 and shown.endswith("\n") and shown.count("\n") == 1
        assert re.search(r"\rtest \[#{30}\] 3/3 [\d.e+-]+ s/it, eta 0:00:00\n$", shown), shown
    else:
        assert re.findall(r"^test: (\d)/3 [\d.e+-]+ s/it, eta \d+:\d\d:\d\d$", shown, re.M) == ["1", "2", "3"]
    assert "mIoU" in capsys.readouterr().out  # the table still goes to stdout
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_test(CONFIG, None, cfg_options=TINY, device="cpu", progress=False)
    assert stream.getvalue() == ""


def test_step_display_on_a_terminal_and_in_a_log() -> None:
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        display = StepDisplay(stream=stream)
        display("tracing")
        display("checking")
        display.close()
    assert re.fullmatch(r"export \[\d+\.\d s\] step 1: tracing\nexport \[\d+\.\d s\] step 2: checking\n"
                        r"export: 2 steps in \d+\.\d s\n", log.getvalue()), log.getvalue()
    assert re.fullmatch(r"\r\x1b\[Kexport \[\d+\.\d s\] step 1: tracing\r\x1b\[Kexport \[\d+\.\d s\] step 2: "
                        r"checking\r\x1b\[Kexport: 2 steps in \d+\.\d s\n", terminal.getvalue()), terminal.getvalue()


def test_export_reports_each_step_before_it_runs(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from semseg import export

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = semseg.init_model(CONFIG, cfg_options=TINY)
    steps: list[str] = []
    result = export.export_onnx(model, tmp_path / "m.onnx", shape=(32, 32), progress=steps.append)
    assert steps[0] == "tracing at 1x32x32, dynamic axes: batch, height, width"
    assert steps[1] == "checking the dynamic axes with onnxruntime at 2x64x96"
    assert steps[-2:] == [f"comparing onnxruntime with PyTorch at {shape}" for shape in result.max_abs_diff]
    steps.clear()
    result = export.export_torchscript(model, tmp_path / "m.pt", shape=(32, 32), progress=steps.append)
    assert steps[0] == "tracing (torch.jit.trace) at 1x32x32"
    assert steps[-len(result.max_abs_diff):] == [f"comparing the exported module with PyTorch at {shape}"
                                                 for shape in result.max_abs_diff]
