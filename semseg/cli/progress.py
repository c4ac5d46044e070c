"""Progress display for long commands: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
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
