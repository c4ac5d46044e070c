"""Progress display for long commands: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ConsoleProgress:
    """A progress bar redrawn in place on a terminal; elsewhere a plain line at every tenth. Timing and
    ETA come from the trainer's :class:`semseg.engine.logging.Progress`."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.timing = None
        self.shown = 0  # tenths shown

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps finished (0 starts the clock)."""
        from semseg.engine.logging import Progress

        if self.timing is None or done == 0:
            self.timing = Progress(0, total)
            if done == 0:
                return
        self.timing.mark_iter()
        rate = f"{self.timing.time_per_iter:.3g} s/it, eta {self.timing.eta}"
        if self.tty:
            filled = self.width * done // max(total, 1)
            end = "\n" if done >= total else ""
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {rate}{end}")
            self.stream.flush()
        elif 10 * done // max(total, 1) > self.shown or done >= total:
            self.shown = 10 * done // max(total, 1)
            print(f"{self.label}: {done}/{total} {rate}", file=self.stream, flush=True)


def _size(num_bytes: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as download sizes are usually shown)."""
    if num_bytes < 1000:
        return f"{num_bytes:.0f} B"
    for unit in ("KB", "MB", "GB"):
        num_bytes /= 1000
        if num_bytes < 1000 or unit == "GB":
            break
    return f"{num_bytes:.1f} {unit}"


class DownloadProgress:
    """Bytes received of a download: a bar with size, rate and ETA on a terminal, elsewhere a plain line
    at every tenth. Called as ``progress(bytes_done, total_bytes)``; ``total_bytes`` is 0 while unknown (no
    Content-Length), and the final call has ``bytes_done == total_bytes``."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.shown = 0  # tenths shown

    def __call__(self, done: int, total: int) -> None:
        from semseg.engine.logging import format_seconds

        if done == 0:
            self.start = time.perf_counter()
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        finished = total > 0 and done >= total
        if total > 0:
            text = f"{_size(done)}/{_size(total)} {_size(rate)}/s, eta {format_seconds((total - done) / rate)}"
        else:
            text = f"{_size(done)} {_size(rate)}/s"
        if self.tty:
            filled = self.width * done // total if total > 0 else 0
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] " if total > 0 else ""
            self.stream.write(f"\r{self.label} {bar}{text}" + ("\n" if finished else ""))
            self.stream.flush()
        elif total > 0 and (10 * done // total > self.shown or finished):
            self.shown = 10 * done // total
            print(f"{self.label}: {text}", file=self.stream, flush=True)

