"""Threads for semseg's commands, so that a shared machine costs a process its share of the cores.

PyTorch gives a process one intra-op thread per physical core, and its OpenMP threads (libgomp) spin at
every barrier before they sleep. Two processes on the same cores then spin against each other: on a
2-core machine two 40-iteration synthetic training runs at once took 109 s, against 13 s for one alone.
So the commands (train, test, predict, benchmark):

- set ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once) unless the user set a policy. OpenMP
  reads it once, when ``import torch`` loads it, so :func:`prefer_passive_wait` runs when ``semseg.cli``
  is imported, before any command imports torch; where torch was imported first (semseg used as a
  library) the policy cannot change any more, and the log says so;
- give each process ``cores // local processes`` intra-op threads (:func:`choose_threads`): the cores it
  may run on (its affinity mask, counted in physical cores as torch counts them, capped by a cgroup CPU
  quota) shared among the processes torchrun starts on this machine (``LOCAL_WORLD_SIZE``);
- give each data-loader worker one thread (:func:`limit_worker_threads`).

``--threads N`` or ``SEMSEG_THREADS=N``, then ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and a
``torch.set_num_threads`` call made before the command started win over the automatic count.
``SEMSEG_THREADS=off`` leaves torch's defaults and the wait policy alone (to measure the difference).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SWITCH = "SEMSEG_THREADS"  # "off", or a thread count as --threads takes
USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # the ones torch reads, in its order
CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")

# What prefer_passive_wait found: None until it has run, else one phrase for the log.
_wait_note: str | None = None
_torch_came_first = False  # torch was imported before semseg's command started (library use)
_threads_set: int | None = None  # the intra-op count configure_threads last set
_chosen: str | None = None  # configure_threads' line


def is_off(env: Mapping[str, str] = os.environ) -> bool:
    """Whether ``SEMSEG_THREADS=off`` (or 0, false, no) turns the policy off."""
    return env.get(SWITCH, "").strip().lower() in ("off", "0", "false", "no")


def prefer_passive_wait(env: dict[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``env`` (default ``os.environ``) unless the user set a policy,
    the policy is off, or torch is already imported (OpenMP has read its environment by then). Returns
    the phrase the log prints, e.g. 'OMP_WAIT_POLICY=PASSIVE (set by semseg before torch started)'."""
    global _wait_note, _torch_came_first
    env = os.environ if env is None else env
    user_policy = env.get("OMP_WAIT_POLICY", "").strip()
    _torch_came_first = "torch" in sys.modules
    if user_policy:
        _wait_note = f"OMP_WAIT_POLICY={user_policy} (the user's)"
    elif is_off(env):
        _wait_note = f"OMP_WAIT_POLICY unset ({SWITCH}=off)"
    elif _torch_came_first:
        _wait_note = ("OMP_WAIT_POLICY unset and not applied: torch was imported before semseg's command "
                      "started, and OpenMP reads it when torch loads")
    else:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        _wait_note = "OMP_WAIT_POLICY=PASSIVE (set by semseg before torch started)"
    return _wait_note


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup quota allows this process (``cpu.max`` of cgroup v2, or v1's ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``), looked up at the root of ``root`` as a container sees it; None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def physical_cores(cpus: Iterable[int], topology: Path = CPU_TOPOLOGY) -> int:
    """How many physical cores the logical CPUs ``cpus`` sit on (hyper-threads of one core count once;
    torch, through MKL, starts one thread per physical core); the CPU count where sysfs does not say."""
    cpus = list(cpus)
    cores = set()
    for cpu in cpus:
        folder = topology / f"cpu{cpu}" / "topology"
        try:
            cores.add(((folder / "physical_package_id").read_text().strip(), (folder / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores)


def usable_cores(cpus: Iterable[int] | None = None, cgroup_root: Path = CGROUP_ROOT,
                 topology: Path = CPU_TOPOLOGY) -> int:
    """Physical cores this process may use: its affinity mask (``os.sched_getaffinity``; ``cpus`` in
    tests), capped by the cgroup CPU quota (rounded down, at least 1)."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = physical_cores(cpus, topology)
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def local_processes(env: Mapping[str, str] = os.environ) -> int:
    """Processes of this job on this machine: torchrun's ``LOCAL_WORLD_SIZE``, 1 without torchrun."""
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class ThreadChoice:
    """Intra-op threads for this process (None: leave torch's as they are) and why, for the log."""

    threads: int | None
    reason: str


def _positive(value: str, name: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{name}: expected a positive number of threads, got {value!r}")
    return count


def choose_threads(requested: int | None, cores: int, processes: int, env: Mapping[str, str] = os.environ,
                   torch_threads: int | None = None) -> ThreadChoice:
    """The intra-op thread count, first that applies: ``requested`` (``--threads``), ``SEMSEG_THREADS=N``,
    ``SEMSEG_THREADS=off`` (torch's own), ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, ``torch_threads``
    (what an earlier ``torch.set_num_threads`` call set; None when nobody called it), else
    ``cores // processes`` (at least 1)."""
    if requested is not None:
        return ThreadChoice(_positive(str(requested), "--threads"), "--threads")
    switch = env.get(SWITCH, "").strip()
    if is_off(env):
        return ThreadChoice(None, f"torch's default ({SWITCH}=off)")
    if switch:
        return ThreadChoice(_positive(switch, SWITCH), SWITCH)
    for name in USER_THREAD_VARIABLES:
        if env.get(name, "").strip():
            return ThreadChoice(None, f"{name}={env[name].strip()}, the user's")
    if torch_threads is not None:
        return ThreadChoice(None, f"torch.set_num_threads({torch_threads}) called before the command")
    return ThreadChoice(max(1, cores // processes), f"{cores} core(s) / {processes} local process(es)")


def _user_set_torch_threads(torch_module) -> int | None:
    """What an earlier ``torch.set_num_threads`` call set, when semseg can tell: only where torch was
    imported before the command started, and the count differs from torch's default and semseg's own."""
    if not _torch_came_first:
        return None
    current = torch_module.get_num_threads()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return None if current in (physical_cores(cpus), _threads_set) else current


def configure_threads(requested: int | None = None) -> str:
    """Choose and apply this process's intra-op threads (``torch.set_num_threads``, and OpenCV's to match);
    returns the line the log prints: the count, why, the wait policy, the data-loader workers' threads."""
    global _threads_set, _chosen
    wait = _wait_note if _wait_note is not None else prefer_passive_wait()
    import torch

    choice = choose_threads(requested, usable_cores(), local_processes(), os.environ,
                            _user_set_torch_threads(torch))
    if choice.threads is not None:
        torch.set_num_threads(choice.threads)
        _threads_set = choice.threads
        _set_opencv_threads(choice.threads)
    workers = "data-loader workers: torch's default" if is_off() else "data-loader workers: 1 thread each"
    _chosen = f"threads: {torch.get_num_threads()} intra-op ({choice.reason}); {wait}; {workers}"
    return _chosen


def own_process() -> bool:
    """Whether semseg's command line started this process's torch (a ``semseg`` or ``python -m semseg``
    process), as opposed to a program that imported torch itself and calls ``semseg.cli.main``."""
    return _wait_note is not None and not _torch_came_first


def chosen() -> str | None:
    """The line :func:`configure_threads` returned last (for a run's log), None before it ran."""
    return _chosen


def _set_opencv_threads(count: int) -> None:
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(count)


def limit_worker_threads() -> None:
    """In a data-loader worker: one torch thread and OpenCV without its thread pool, so that the workers
    and the main process do not multiply their threads. Call it from the loader's ``worker_init_fn``;
    a no-op under ``SEMSEG_THREADS=off``."""
    if is_off():
        return
    import torch

    torch.set_num_threads(1)
    _set_opencv_threads(0)
