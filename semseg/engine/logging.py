"""Run logs: a progress line on the console, a text log and a JSON-lines log in the work dir, and
TensorBoard scalars when tensorboard is installed. Only rank 0 writes."""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch


def format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class RunLogger:
    """Writes ``<timestamp>.log`` (text) and ``<timestamp>.jsonl`` (one JSON object per record).

    ``enabled=False`` (ranks other than 0) keeps every call a no-op.
    """

    def __init__(self, work_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.work_dir = Path(work_dir)
        self.stamp = time.strftime("%Y%m%d_%H%M%S")
        self._text = self._json = self._board = None
        if not enabled:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.text_path = self.work_dir / f"{self.stamp}.log"
        self.json_path = self.work_dir / f"{self.stamp}.jsonl"
        self._text = self.text_path.open("a", buffering=1)
        self._json = self.json_path.open("a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._board = SummaryWriter(str(self.work_dir / "tensorboard"))
            except ImportError:
                self._board = None

    def info(self, message: str) -> None:
        """A line on stdout and in the text log."""
        if not self.enabled:
            return
        line = f"{time.strftime('%Y/%m/%d %H:%M:%S')} - {message}"
        print(line, flush=True)
        self._text.write(line + "\n")

    def record(self, mode: str, step: int, values: dict[str, Any]) -> None:
        """One JSON line (``mode`` is 'train' or 'val'), plus TensorBoard scalars."""
        if not self.enabled:
            return
        row = {"mode": mode, "iter": step, **{k: _plain(v) for k, v in values.items()}}
        self._json.write(json.dumps(row) + "\n")
        if self._board is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "iter":
                    self._board.add_scalar(f"{mode}/{key}", value, step)

    def close(self) -> None:
        for handle in (self._text, self._json, self._board):
            if handle is not None:
                handle.close()


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Progress:
    """Iteration timing: time per iteration, data time, and ETA from a moving average."""

    def __init__(self, start_iter: int, max_iters: int, window: int = 50):
        self.max_iters = max_iters
        self.iter = start_iter
        self.window = window
        self.iter_times: list[float] = []
        self.data_times: list[float] = []
        self._last = time.perf_counter()

    def mark_data(self) -> None:
        now = time.perf_counter()
        self.data_times = (self.data_times + [now - self._last])[-self.window:]

    def mark_iter(self) -> None:
        now = time.perf_counter()
        self.iter_times = (self.iter_times + [now - self._last])[-self.window:]
        self._last = now
        self.iter += 1

    @property
    def time_per_iter(self) -> float:
        return sum(self.iter_times) / max(len(self.iter_times), 1)

    @property
    def data_time(self) -> float:
        return sum(self.data_times) / max(len(self.data_times), 1)

    @property
    def eta(self) -> str:
        return format_seconds(self.time_per_iter * (self.max_iters - self.iter))


def memory_mb(device: torch.device) -> int:
    """Peak CUDA memory in MiB on GPUs; the process's resident memory on CPUs."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device) / 2**20)
    try:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak_kb / 1024) if sys.platform != "darwin" else int(peak_kb / 2**20)
    except ImportError:
        return 0
