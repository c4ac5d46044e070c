"""torch.distributed set-up for runs under ``torchrun`` (NCCL on GPUs, Gloo on CPUs)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_VARIABLE = "SEMSEG_DIST_TIMEOUT"


def collective_timeout(dist_cfg: dict | None = None) -> timedelta:
    """How long a collective operation (all-reduce, barrier, broadcast) waits for the other processes
    before it fails, so that a process stuck or gone cannot hang the others for ever.

    ``SEMSEG_DIST_TIMEOUT`` (seconds) in the environment wins; else the config's
    ``env_cfg.dist_cfg.timeout`` (seconds, as MMEngine reads it); else 30 minutes (PyTorch's default for
    Gloo: room for a slow first iteration under ``torch.compile`` or a large checkpoint that rank 0 writes
    while the others wait).
    """
    raw = os.environ.get(TIMEOUT_VARIABLE)
    source = TIMEOUT_VARIABLE
    if raw is None or not raw.strip():
        raw = (dist_cfg or {}).get("timeout")
        source = "env_cfg.dist_cfg.timeout"
    if raw is None:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{source} must be a positive number of seconds, got {raw!r}")
    return timedelta(seconds=seconds)


def init_distributed(device: str | None = None,
                     dist_cfg: dict | None = None) -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns ``(rank, world_size, device)``. Without ``WORLD_SIZE`` > 1 nothing is initialized and
    ``device`` is used as given (default: ``cuda`` when available, else ``cpu``). Under torchrun each
    process takes GPU ``LOCAL_RANK`` with NCCL, or the CPU with Gloo when ``device='cpu'`` or there is no
    GPU. Asking for CUDA without one is an error, not a silent fall-back to the CPU. Collective
    operations fail after :func:`collective_timeout` (``dist_cfg``: the config's ``env_cfg.dist_cfg``).
    """
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but CUDA is not available here")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if world_size > 1:
        if use_cuda:
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(chosen)
        else:
            chosen = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=collective_timeout(dist_cfg))
        return rank(), dist.get_world_size(), chosen
    chosen = torch.device(device) if device is not None else torch.device("cuda" if use_cuda else "cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return 0, 1, chosen


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place; a no-op on one process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process."""
    if world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_object(obj) -> list:
    """Every process's ``obj``, in rank order (``[obj]`` on one process)."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process (a no-op on one process)."""
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def mean_over_processes(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each value (a scalar tensor: a loss term, an accuracy) averaged over the processes, for logging.

    Every process must call it, at the same iteration. The processes need not report the same keys (a
    loss term that one rank computes and another does not, or adds later): they first exchange their
    values by name, so no process waits in a reduction the others do not enter, and a key is averaged over
    the processes that report it (neither a zero nor a NaN is invented for the others). Keys come out in
    the order of first appearance, rank 0's first. One process: the values as they are (one
    host-device synchronization).
    """
    numbers = torch.stack([v.detach().float() for v in values.values()]).tolist() if values else []
    local = dict(zip(values, numbers, strict=True))
    if world_size() == 1:
        return local
    totals: dict[str, list[float]] = {}
    for reported in all_gather_object(local):
        for key, value in reported.items():
            totals.setdefault(key, []).append(value)
    return {key: sum(reported) / len(reported) for key, reported in totals.items()}


def process_label() -> str:
    """``'rank R of W'`` under torchrun (read from the environment, so it holds after the group is gone);
    ``''`` for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')} of {world}" if world > 1 else ""


# Gloo's and the TCP store's words for "the other side went away" and "the other side did not answer".
PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
             "socket closed")
TIMED_OUT = ("timed out", "timeout")


def describe_failure(error: BaseException, message: str | None = None) -> str:
    """The one-line report of ``error`` (``message``: its text, default ``str(error)``) for this process.

    Under torchrun it names this process's rank, and a failed collective operation says what it means: a
    lost connection means another process failed or was killed first (its own message names it), a time-out
    means another process stopped answering (stuck, or gone without closing its connections) for the
    ``SEMSEG_DIST_TIMEOUT`` seconds allowed.
    """
    text = str(error) if message is None else message
    label = process_label()
    if not label:
        return text
    kind = _collective_failure(error)
    if kind == "peer lost":
        text = (f"lost the connection to another process, which failed or was killed first (see its message) "
                f"({text})")
    elif kind == "timed out":
        text = (f"no answer from another process within the collective time-out ({text}): one process is "
                f"stuck or died; if a step legitimately takes longer, raise {TIMEOUT_VARIABLE} (seconds)")
    return f"{label}: {text}"


def _collective_failure(error: BaseException) -> str | None:
    """``'peer lost'`` or ``'timed out'`` for a communication error of torch.distributed, else None."""
    text = str(error).lower()
    backend_error = isinstance(error, RuntimeError) and ("gloo" in text or "nccl" in text)
    if not (isinstance(error, dist.DistError) or backend_error):
        return None
    if any(words in text for words in PEER_LOST):
        return "peer lost"
    return "timed out" if any(words in text for words in TIMED_OUT) else None


def record_failure(error: BaseException) -> None:
    """Write ``error`` to the file torchrun reads a failed worker's message from (``TORCHELASTIC_ERROR_FILE``,
    as its ``@record`` does), so that torchrun's closing summary shows the rank and the one-line reason
    instead of a link. A no-op outside torchrun."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    line = describe_failure(error, f"{type(error).__name__}: {error}")
    extra = {"py_callstack": line, "timestamp": str(int(time.time()))}  # torchrun reads whole seconds
    record = {"message": {"message": line, "extraInfo": extra}}
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(record))


# After a lost connection, how long a process waits before it exits, so that torchrun sees the process that
# failed first end first and names it as the root cause (it stops the waiting ones itself).
PEER_FAILURE_GRACE_S = 3.0


@contextlib.contextmanager
def process_group_scope() -> Iterator[None]:
    """Run a command's body, then leave the process group: waiting for the others when it ends normally,
    at once (:func:`cleanup` with ``wait=False``) when it raises."""
    try:
        yield
    except BaseException:
        cleanup(wait=False)
        raise
    cleanup()


def cleanup(wait: bool = True) -> None:
    """Leave the process group; a no-op without one. A group left open aborts the interpreter at exit.

    ``wait``: first wait until every process got here (the normal end of a command). On an error
    (``wait=False``, called from the ``except`` block that handles it) the others may never arrive: the
    group is torn down at once, which closes this process's connections, so that peers blocked in a
    collective operation fail now instead of waiting for the time-out; the error is recorded for torchrun
    (:func:`record_failure`), and a process that only noticed another's failure lingers
    ``PEER_FAILURE_GRACE_S`` under torchrun so that the first failure is the one reported as the cause.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
        dist.destroy_process_group()
        return
    error = sys.exc_info()[1]
    if error is not None:
        record_failure(error)
    dist.destroy_process_group()
    under_torchrun = bool(os.environ.get("TORCHELASTIC_ERROR_FILE"))
    if error is not None and under_torchrun and _collective_failure(error) == "peer lost":
        time.sleep(PEER_FAILURE_GRACE_S)
