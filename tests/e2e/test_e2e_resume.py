"""Exact resume: a run killed with SIGKILL and resumed with ``--resume`` (or started again from a
checkpoint with ``--resume-from``) ends with the same weights and optimizer state, bit for bit, as a run
that was never stopped; every checkpoint left behind by the kill loads."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from e2e_helpers import REPO, checkpoints, env, load, run_semseg, semseg_command, train_args

MAX_ITERS = 40
OPTIONS = [f"train_cfg.max_iters={MAX_ITERS}", "train_cfg.val_interval=20", "default_hooks.checkpoint.interval=10",
           "default_hooks.checkpoint.max_keep_ckpts=-1", "randomness.seed=0", "randomness.deterministic=True"]


def assert_same(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values are equal; tensors with ``torch.equal``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(map(str, set(a) ^ set(b))))
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_same_training_state(path_a, path_b) -> None:
    a, b = load(path_a), load(path_b)
    assert a["meta"]["iter"] == b["meta"]["iter"] == MAX_ITERS
    assert_same(a["state_dict"], b["state_dict"], "state_dict")
    assert_same(a["optimizer"], b["optimizer"], "optimizer")
    assert_same(a["param_schedulers"], b["param_schedulers"], "param_schedulers")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Run A: 40 iterations, never stopped; checkpoints every 10 (all kept)."""
    work_dir = tmp_path_factory.mktemp("uninterrupted") / "work"
    run_semseg(*train_args(work_dir, *OPTIONS))
    return work_dir


def test_killed_run_resumes_to_the_same_weights(uninterrupted, tmp_path):
    work_dir = tmp_path / "work"
    with open(tmp_path / "killed.out", "w") as output:
        proc = subprocess.Popen(semseg_command(*train_args(work_dir, *OPTIONS)), cwd=REPO, env=env(),
                                stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (work_dir / "iter_10.pth").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.kill()  # SIGKILL: no handler, no cleanup
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.out").read_text()[-2000:]
    left = checkpoints(work_dir)
    assert left and max(left) < MAX_ITERS  # killed part-way
    for path in left.values():  # whatever the kill interrupted, no checkpoint is half-written
        assert load(path)["meta"]["iter"] == int(path.stem.split("_")[1])
    assert_same(load(left[10])["state_dict"], load(uninterrupted / "iter_10.pth")["state_dict"], "iter_10")

    run_semseg(*train_args(work_dir, *OPTIONS, flags=("--resume",)))
    logs = "".join(path.read_text() for path in work_dir.glob("*.log"))
    assert f"at iteration {max(left)}" in logs and "resumed from" in logs
    assert_same_training_state(uninterrupted / f"iter_{MAX_ITERS}.pth", work_dir / f"iter_{MAX_ITERS}.pth")


def test_resume_from_a_checkpoint_elsewhere(uninterrupted, tmp_path):
    """``--resume-from`` another run's iter_20.pth (written just before that run validated) in a fresh work
    dir gives that run's final state."""
    run_semseg(*train_args(tmp_path / "work", *OPTIONS, flags=("--resume-from", uninterrupted / "iter_20.pth")))
    assert sorted(checkpoints(tmp_path / "work")) == [30, 40]
    assert_same_training_state(uninterrupted / f"iter_{MAX_ITERS}.pth", tmp_path / "work" / f"iter_{MAX_ITERS}.pth")


def test_resume_from_a_missing_checkpoint_fails(tmp_path):
    proc = run_semseg(*train_args(tmp_path / "work", *OPTIONS, flags=("--resume-from", tmp_path / "nope.pth")),
                      check=False)
    assert proc.returncode != 0 and "checkpoint to resume from not found" in proc.stderr and "nope.pth" in proc.stderr
