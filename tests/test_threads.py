"""Threads under load (semseg.threads): the intra-op count from the usable cores and torchrun's local
processes, the user's overrides, OMP_WAIT_POLICY=PASSIVE in place before torch loads OpenMP (checked by
what libgomp itself reports), one thread per data-loader worker, and the commands' ``--threads``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from semseg import threads
from semseg.cli import build_parser
from semseg.cli.common import apply_threads

SYNTHETIC = "fcn_r18-d8_1xb8-600_synthetic-96x96"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch: pytest.MonkeyPatch):
    """Keep this process's thread settings and semseg.threads' records as they were."""
    for name in ("_wait_note", "_torch_came_first", "_threads_set", "_chosen"):
        monkeypatch.setattr(threads, name, getattr(threads, name))
    for name in ("OMP_WAIT_POLICY", threads.SWITCH, *threads.USER_THREAD_VARIABLES, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    count, opencv = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(count)
    cv2.setNumThreads(opencv)


def _topology(root: Path, cores_of_cpus: list[int]) -> Path:
    """A fake /sys/devices/system/cpu: logical CPU i sits on core cores_of_cpus[i] of package 0."""
    for cpu, core in enumerate(cores_of_cpus):
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text("0\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
], ids=["v2-quota", "v2-max", "v1-quota", "v1-unlimited", "none"])
def test_cgroup_cpu_limit(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cgroup_cpu_limit(tmp_path) == expected


def test_usable_cores_counts_physical_cores_of_the_affinity_mask_under_the_quota(tmp_path: Path) -> None:
    topology = _topology(tmp_path / "cpu", [0, 0, 1, 1, 2, 2, 3, 3])  # 4 cores, 2 hyper-threads each
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert threads.usable_cores(range(8), cgroup, topology) == 4
    assert threads.usable_cores([0, 1, 2], cgroup, topology) == 2
    assert threads.usable_cores([5], cgroup, topology) == 1
    (cgroup / "cpu.max").write_text("250000 100000\n")
    assert threads.usable_cores(range(8), cgroup, topology) == 2  # 2.5 CPUs of quota: rounded down
    (cgroup / "cpu.max").write_text("20000 100000\n")
    assert threads.usable_cores(range(8), cgroup, topology) == 1
    assert threads.physical_cores([0, 1, 2], tmp_path / "no-sysfs") == 3


@pytest.mark.parametrize(("value", "expected"), [(None, 1), ("2", 2), ("8", 8), ("x", 1), ("0", 1)])
def test_local_processes_from_torchrun(value: str | None, expected: int) -> None:
    env = {} if value is None else {"LOCAL_WORLD_SIZE": value}
    assert threads.local_processes(env) == expected


@pytest.mark.parametrize(("requested", "cores", "processes", "env", "torch_threads", "expected", "reason"), [
    (None, 8, 1, {}, None, 8, "8 core(s) / 1 local process(es)"),
    (None, 8, 2, {}, None, 4, "8 core(s) / 2 local process(es)"),
    (None, 8, 3, {}, None, 2, "8 core(s) / 3 local process(es)"),
    (None, 2, 4, {}, None, 1, "2 core(s) / 4 local process(es)"),
    (3, 8, 2, {"OMP_NUM_THREADS": "5", "SEMSEG_THREADS": "6"}, 7, 3, "--threads"),
    (None, 8, 2, {"OMP_NUM_THREADS": "5", "SEMSEG_THREADS": "6"}, 7, 6, "SEMSEG_THREADS"),
    (None, 8, 2, {"SEMSEG_THREADS": "off", "OMP_NUM_THREADS": "5"}, None, None, "torch's default (SEMSEG_THREADS=off)"),
    (None, 8, 2, {"OMP_NUM_THREADS": "5"}, 7, None, "OMP_NUM_THREADS=5, the user's"),
    (None, 8, 2, {"MKL_NUM_THREADS": "3"}, None, None, "MKL_NUM_THREADS=3, the user's"),
    (None, 8, 2, {}, 7, None, "torch.set_num_threads(7) called before the command"),
], ids=["alone", "two-local", "three-local", "more-processes-than-cores", "--threads-wins", "switch-number",
        "switch-off", "omp-env", "mkl-env", "set_num_threads"])
def test_choose_threads(requested, cores, processes, env, torch_threads, expected, reason) -> None:
    choice = threads.choose_threads(requested, cores, processes, env, torch_threads)
    assert choice == threads.ThreadChoice(expected, reason)


@pytest.mark.parametrize(("requested", "env", "message"), [
    (0, {}, "--threads: expected a positive number of threads, got '0'"),
    (None, {"SEMSEG_THREADS": "many"}, "SEMSEG_THREADS: expected a positive number of threads, got 'many'"),
])
def test_bad_thread_counts_are_named(requested, env, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        threads.choose_threads(requested, 2, 1, env)


def test_passive_wait_is_set_only_before_torch_and_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh command process (restored after the test)
    env: dict[str, str] = {}
    assert threads.prefer_passive_wait(env) == "OMP_WAIT_POLICY=PASSIVE (set by semseg before torch started)"
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "active"}
    assert threads.prefer_passive_wait(env) == "OMP_WAIT_POLICY=active (the user's)"
    assert env == {"OMP_WAIT_POLICY": "active"}
    env = {"SEMSEG_THREADS": "off"}
    assert threads.prefer_passive_wait(env) == "OMP_WAIT_POLICY unset (SEMSEG_THREADS=off)"
    assert "OMP_WAIT_POLICY" not in env
    monkeypatch.undo()  # torch imported: too late for OpenMP, and the note says so instead of pretending
    env = {}
    assert "not applied: torch was imported before semseg's command started" in threads.prefer_passive_wait(env)
    assert env == {}


def test_apply_threads_sets_and_reports_the_choice(capsys: pytest.CaptureFixture[str]) -> None:
    line = apply_threads(build_parser().parse_args(["test", SYNTHETIC, "ckpt.pth", "--threads", "1"]))
    assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert line.startswith("threads: 1 intra-op (--threads); OMP_WAIT_POLICY")
    assert threads.chosen() == line
    assert capsys.readouterr().err == ""  # torch came first (library use): this program's stderr stays its own


def test_an_earlier_set_num_threads_call_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_wait_note", None)
    monkeypatch.setattr(threads, "physical_cores", lambda cpus, topology=None: 64)  # torch's default: 64
    torch.set_num_threads(1)  # the user's call, before semseg's command (torch came first)
    line = threads.configure_threads()
    assert line.startswith("threads: 1 intra-op (torch.set_num_threads(1) called before the command)")
    assert "not applied: torch was imported before" in line and torch.get_num_threads() == 1


@pytest.mark.parametrize("command", ["train", "test", "predict", "benchmark"])
def test_threads_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra = {"test": ["ckpt.pth"], "predict": ["ckpt.pth", "in.png"]}.get(command, [])
    parser = build_parser()
    assert parser.parse_args([command, SYNTHETIC, *extra, "--threads", "3"]).threads == 3
    assert parser.parse_args([command, SYNTHETIC, *extra]).threads is None
    with pytest.raises(SystemExit):
        parser.parse_args([command, SYNTHETIC, *extra, "--threads", "0"])
    assert "--threads: expected a positive number of threads, got '0'" in capsys.readouterr().err


class _ThreadCounts(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[int, int]:
        return torch.get_num_threads(), cv2.getNumThreads()


def _limited(worker_id: int) -> None:
    cv2.setNumThreads(4)  # as a worker inherits it from a main process with more threads
    threads.limit_worker_threads()


def test_data_loader_workers_get_one_thread() -> None:
    loader = DataLoader(_ThreadCounts(), batch_size=None, num_workers=1, worker_init_fn=_limited)
    assert [tuple(int(v) for v in item) for item in loader] == [(1, 1), (1, 1)]


def _semseg(args: list[str], **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", threads.SWITCH, *threads.USER_THREAD_VARIABLES, "LOCAL_WORLD_SIZE")}
    return subprocess.run([sys.executable, "-m", "semseg", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("env", "spin_count"), [
    ({}, "0"),                                    # PASSIVE, set by semseg before torch loaded OpenMP
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "30000000000"),  # the user's policy stays
    ({"SEMSEG_THREADS": "off"}, "300000"),           # libgomp's default: spin, then sleep
], ids=["semseg-passive", "user-active", "off"])
def test_wait_policy_reaches_openmp(env: dict[str, str], spin_count: str) -> None:
    """libgomp prints the policy it read at load time (OMP_DISPLAY_ENV=VERBOSE): its spin count says
    whether OMP_WAIT_POLICY was in the environment before ``import torch`` in the command's process."""
    run = _semseg(["env"], OMP_DISPLAY_ENV="VERBOSE", OMP_NUM_THREADS="1", **env)
    assert run.returncode == 0, run.stderr
    if "GOMP_SPINCOUNT" not in run.stderr:
        pytest.skip("torch's OpenMP here is not libgomp (nothing reports its spin count)")
    assert f"GOMP_SPINCOUNT = '{spin_count}'" in run.stderr


def test_command_logs_its_choice_from_the_local_process_count() -> None:
    """Without --threads or OMP_NUM_THREADS, a process of 64 torchrun processes on this machine gets 1."""
    run = _semseg(["benchmark", SYNTHETIC, "--device", "cpu", "--num-images", "1", "--warmup", "1", "--quiet"],
                  LOCAL_WORLD_SIZE="64")
    assert run.returncode == 0, run.stderr
    cores = threads.usable_cores()
    assert (f"threads: 1 intra-op ({cores} core(s) / 64 local process(es)); "
            "OMP_WAIT_POLICY=PASSIVE (set by semseg before torch started); "
            "data-loader workers: 1 thread each") in run.stdout


def test_train_announces_threads_option(tmp_path: Path) -> None:
    options = ["train_cfg.max_iters=1", "train_cfg.val_interval=10", "default_hooks.checkpoint.interval=10",
               "train_dataloader.batch_size=2", "train_dataloader.dataset.num_samples=2"]
    run = _semseg(["train", SYNTHETIC, "--device", "cpu", "--threads", "1", "--work-dir", str(tmp_path),
                   "--cfg-options", *options])
    assert run.returncode == 0, run.stderr
    assert ("semseg train: threads: 1 intra-op (--threads); "
            "OMP_WAIT_POLICY=PASSIVE (set by semseg before torch started)") in run.stderr.splitlines()[0]
