"""Whole inference that would not fit falls back to slide inference, with a logged message (issue 12, 8a):
``model.test_cfg.max_whole_pixels`` (an estimate from the input's size) and ``model.test_cfg.fallback_slide``
(a real out-of-memory error, CPU or CUDA)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.config import load_config
from semseg.models.inference import (
    DEFAULT_FALLBACK_CROP,
    fallback_window,
    is_out_of_memory,
    slide_inference,
    whole_or_slide,
)

CONFIG = Path(__file__).resolve().parents[1] / "semseg/configs/synthetic/fcn_r18-d8_1xb8-600_synthetic-96x96.py"
REPO = Path(__file__).resolve().parents[1]
CPU_OOM = "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: not enough memory: you tried to allocate"


def segmentor(**test_cfg) -> nn.Module:
    torch.manual_seed(0)
    options = {f"model.test_cfg.{key}": value for key, value in test_cfg.items()}
    model = build("segmentor", load_config(CONFIG, options).model.to_dict()).eval()
    return model


class RunsOutAbove(nn.Module):
    """A per-pixel model whose forward pass fails like an allocator once it sees more than ``limit`` pixels."""

    def __init__(self, limit: int, error: Exception | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        self.out_channels = 4
        self.limit = limit
        self.error = error
        self.sizes: list[tuple[int, int]] = []

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[2:]))
        if x.shape[0] * x.shape[2] * x.shape[3] > self.limit:
            raise self.error or RuntimeError(f"{CPU_OOM} {x.numel() * 64} bytes.")
        return self.conv(x)


def test_over_max_whole_pixels_slides_with_the_configs_crop(caplog) -> None:
    torch.set_num_threads(1)
    model = segmentor(mode="whole", crop_size=(16, 24), stride=(11, 13), max_whole_pixels=1000)
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="semseg.models.inference"):
        out = model.inference(x)
        slid = slide_inference(model, x, (16, 24), (11, 13))
        whole = model.encode_decode(x)
    assert torch.equal(out, slid)
    assert (out - whole).abs().max() > 1e-3  # it really slid: the crops see less context than the whole image
    assert "2 x 37 x 45 input pixels are over max_whole_pixels=1000" in caplog.text
    assert "falling back to slide inference (crop (16, 24), stride (11, 13))" in caplog.text


def test_within_budget_or_unset_stays_whole(caplog) -> None:
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 29, 31)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="semseg.models.inference"):
        for options in ({"max_whole_pixels": 29 * 31}, {}, {"fallback_slide": True}):
            model = segmentor(mode="whole", **options)
            assert torch.equal(model.inference(x), model.encode_decode(x))
    assert "falling back" not in caplog.text


def test_out_of_memory_falls_back_only_when_asked(caplog) -> None:
    x = torch.randn(1, 3, 40, 50)
    model = RunsOutAbove(limit=32 * 32)
    with pytest.raises(RuntimeError, match="not enough memory"):  # not asked: the error stands
        whole_or_slide(model, x, {})
    model.sizes.clear()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="semseg.models.inference"):
        out = whole_or_slide(model, x, {"fallback_slide": True, "crop_size": (32, 32), "stride": (20, 20)})
    assert model.sizes[0] == (40, 50) and set(model.sizes[1:]) == {(32, 32)}  # whole tried once, then crops
    assert torch.allclose(out, model.conv(x), atol=1e-6)  # per-pixel model: slide equals whole
    assert "ran out of memory (DefaultCPUAllocator: not enough memory" in caplog.text


def test_cuda_out_of_memory_is_recognized_and_other_errors_are_not() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert not is_out_of_memory(RuntimeError("Given groups=1, weight of size [4, 3, 1, 1], expected input"))
    assert not is_out_of_memory(ValueError("not enough memory"))
    model = RunsOutAbove(limit=0, error=RuntimeError("Given groups=1, expected 3 channels"))
    with pytest.raises(RuntimeError, match="expected 3 channels"):  # a real bug is not hidden by a retry
        whole_or_slide(model, torch.randn(1, 3, 8, 8), {"fallback_slide": True})


def test_fallback_window_defaults() -> None:
    model = RunsOutAbove(limit=0)
    assert fallback_window(model, {}) == (DEFAULT_FALLBACK_CROP, (342, 342))
    assert fallback_window(segmentor(), {}) == ((96, 96), (64, 64))  # the data preprocessor's training crop
    assert fallback_window(model, {"crop_size": (30, 45)}) == ((30, 45), (20, 30))
    assert fallback_window(model, {"crop_size": 64, "stride": 40}) == ((64, 64), (40, 40))


def test_real_cpu_out_of_memory_falls_back(tmp_path: Path) -> None:
    """A process limited in address space cannot allocate whole inference's 655 MB activation; slide
    inference (512 x 512 crops) fits, and the message says what happened."""
    script = tmp_path / "oom.py"
    script.write_text(textwrap.dedent("""
        import logging, resource
        import torch
        from torch import nn
        from semseg.models.inference import whole_or_slide

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        torch.set_num_threads(1)


        class Wide(nn.Module):
            out_channels = 4

            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.Conv2d(64, 4, 1))

            def encode_decode(self, x):
                return self.body(x)


        model = Wide().eval()
        x = torch.randn(1, 3, 1600, 1600)
        status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
        limit = int(status) * 1024 + 400 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        with torch.no_grad():
            out = whole_or_slide(model, x, {"fallback_slide": True})
            slid = model.encode_decode(x[:, :, :512, :512])
        assert torch.allclose(out[:, :, :512, :512], slid, atol=1e-5)
        print("done", tuple(out.shape))
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done (1, 4, 1600, 1600)" in result.stdout
    assert "whole inference on 1 x 1600 x 1600 ran out of memory (DefaultCPUAllocator" in result.stderr
    assert "falling back to slide inference (crop (512, 512), stride (342, 342))" in result.stderr
