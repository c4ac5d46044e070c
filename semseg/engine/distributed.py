"""torch.distributed set-up for runs under ``torchrun`` (NCCL on GPUs, Gloo on CPUs)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_distributed(device: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns ``(rank, world_size, device)``. Without ``WORLD_SIZE`` > 1 nothing is initialized and
    ``device`` is used as given (default: ``cuda`` when available, else ``cpu``). Under torchrun each
    process takes GPU ``LOCAL_RANK`` with NCCL, or the CPU with Gloo when ``device='cpu'`` or there is no
    GPU. Asking for CUDA without one is an error, not a silent fall-back to the CPU.
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
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
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


def cleanup(wait: bool = True) -> None:
    """Leave the process group, after every process got here unless ``wait`` is False (on an error, the
    others may never arrive); a no-op without one. A group left open aborts the interpreter at exit."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
