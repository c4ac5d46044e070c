"""Kill and resume, repeatedly: one training run is killed with SIGKILL six times — in the middle of an
iteration, while a checkpoint is half written, while validation runs, between a checkpoint and its
``last_checkpoint`` pointer, and twice at a random moment — and its newest checkpoint is then damaged; resumed
with ``--resume`` after each, it ends with the weights, optimizer and scheduler states of a run never stopped.

The deterministic kill points are installed by this file run as a script (``python test_kill_resume.py
FAULT -- semseg args``): it wraps a trainer function so that the process sends itself SIGKILL at that
moment, then runs ``semseg``. The product has no test hook.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "semseg" / "configs" / "synthetic" / "fcn_r18-d8_1xb8-600_synthetic-96x96.py"
MAX_ITERS = 20
OPTIONS = [f"train_cfg.max_iters={MAX_ITERS}", "train_cfg.val_interval=10", "default_hooks.checkpoint.interval=5",
           "default_hooks.checkpoint.max_keep_ckpts=2", "train_dataloader.batch_size=2",
           "val_dataloader.dataset.num_samples=3", "default_hooks.logger.interval=5", "randomness.seed=0",
           "randomness.deterministic=True"]


# ------------------------------------------------------------------------------------------- the driver
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_fault(spec: str) -> None:
    """Make this process SIGKILL itself at the moment ``spec`` names (``none``: never).

    ``step:N``: iteration N, after the forward and the loss check, before the optimizer step.
    ``save:N``: while ``iter_N.pth`` is written, with half its bytes on disk (in the temporary file).
    ``val:N``: during the validation at iteration N, after its first batch.
    ``pointer:N``: ``iter_N.pth`` is complete, ``last_checkpoint`` not yet updated.
    """
    from semseg.engine import trainer

    kind, _, at = spec.partition(":")
    at = int(at or 0)
    if kind == "step":
        check = trainer.Trainer._stop_if_non_finite

        def check_then_die(self, losses, loss):
            check(self, losses, loss)
            if self.iter + 1 == at:
                _die()

        trainer.Trainer._stop_if_non_finite = check_then_die
    elif kind == "save":
        writing = {"name": None}
        save_checkpoint, torch_save = trainer.save_checkpoint, torch.save

        def tracked(obj, path):
            writing["name"] = Path(path).name
            save_checkpoint(obj, path)

        def half_then_die(obj, f, *args, **kwargs):
            if writing["name"] != f"iter_{at}.pth":
                return torch_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            torch_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            _die()

        trainer.save_checkpoint, torch.save = tracked, half_then_die
    elif kind == "val":
        validate, evaluate, now = trainer.Trainer.validate, trainer.evaluate, {"iter": None}

        def noting(self):
            now["iter"] = self.iter
            return validate(self)

        def first_batch_then_die(model, loader, *args, **kwargs):
            def batches():
                for i, batch in enumerate(loader):
                    if i == 1:
                        _die()
                    yield batch
            return evaluate(model, batches() if now["iter"] == at else loader, *args, **kwargs)

        trainer.Trainer.validate, trainer.evaluate = noting, first_batch_then_die
    elif kind == "pointer":
        write = trainer.write_text_atomic

        def die_before_pointer(path, text):
            if text.endswith(f"iter_{at}.pth"):
                _die()
            write(path, text)

        trainer.write_text_atomic = die_before_pointer
    elif kind != "none":
        raise ValueError(f"unknown fault {spec!r}")


# ------------------------------------------------------------------------------------------- the test
def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def _start(work_dir: Path, fault: str, out: Path, resume: bool = True) -> subprocess.Popen:
    args = ["train", str(CONFIG), "--work-dir", str(work_dir), *(["--resume"] if resume else []),
            "--cfg-options", *OPTIONS]
    with open(out, "w") as log:
        return subprocess.Popen([sys.executable, __file__, fault, "--", *args], cwd=REPO, env=_env(),
                                stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, out: Path, killed: bool) -> str:
    try:
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    expected = -signal.SIGKILL if killed else 0
    assert proc.returncode == expected, f"exit {proc.returncode}, expected {expected}:\n{text[-3000:]}"
    return text


def _checkpoints(work_dir: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[1]): p for p in work_dir.glob("iter_*.pth")}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _all_complete(work_dir: Path) -> None:
    """Every file under a checkpoint's name loads whole, whatever the kill interrupted."""
    for path in [*work_dir.glob("iter_*.pth"), *work_dir.glob("best_*.pth")]:
        assert _load(path)["meta"]["iter"] == int(path.stem.rsplit("_", 1)[1]), path


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _kill_at_random(work_dir: Path, out: Path, rng: random.Random) -> bool:
    """Start a resumed run and SIGKILL it at a random moment of its training; True if it was still running."""
    proc = _start(work_dir, "none", out)
    deadline = time.monotonic() + 120
    while "training 20 iterations" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.8))
    running = proc.poll() is None
    proc.kill()
    proc.wait()
    return running


def test_killed_six_times_and_damaged_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    start = time.monotonic()
    reference_dir = tmp_path / "uninterrupted"
    reference = _start(reference_dir, "none", tmp_path / "uninterrupted.out", resume=False)  # alongside
    try:
        work_dir = tmp_path / "work"
        out = tmp_path / "run.out"

        # 1: mid-iteration, before any checkpoint
        _wait(_start(work_dir, "step:3", out, resume=False), out, killed=True)
        assert not _checkpoints(work_dir)
        # 2: while the first checkpoint is written: half its bytes under a temporary name, none under its own
        text = _wait(_start(work_dir, "save:5", out), out, killed=True)
        assert "no checkpoint in" in text and "training from the start" in text
        assert not _checkpoints(work_dir) and len(list(work_dir.glob(".iter_5.pth.*.tmp"))) == 1
        # 3: during validation at iteration 10 (iter_5 written); the partial file is removed on resume
        text = _wait(_start(work_dir, "val:10", out), out, killed=True)
        assert "removed 1 partly written checkpoint file(s)" in text
        assert sorted(_checkpoints(work_dir)) == [5] and not list(work_dir.glob(".*.tmp"))
        # 4: iter_15 complete, last_checkpoint still naming iter_10
        text = _wait(_start(work_dir, "pointer:15", out), out, killed=True)
        assert f"resumed from {work_dir / 'iter_5.pth'} at iteration 5" in text
        assert sorted(_checkpoints(work_dir)) == [5, 10, 15]
        assert (work_dir / "last_checkpoint").read_text().endswith("iter_10.pth")
        _all_complete(work_dir)
        # 5, 6: at random moments; the first resumes from iter_15, the newest, not the stale pointer's iter_10
        rng = random.Random(12)
        kills = 4
        for attempt in range(2):
            kills += _kill_at_random(work_dir, out, rng)
            if attempt == 0:
                assert f"resumed from {work_dir / 'iter_15.pth'} at iteration 15" in out.read_text()
            _all_complete(work_dir)
        assert kills >= 5  # at most one random kill may come after its run ended
        # 7: the newest checkpoint damaged (truncated): reported, the one before it used
        newest_iter = max(_checkpoints(work_dir))
        newest = _checkpoints(work_dir)[newest_iter]
        newest.write_bytes(newest.read_bytes()[:100_000])
        previous = max(n for n in _checkpoints(work_dir) if n < newest_iter)
        text = _wait(_start(work_dir, "none", out), out, killed=False)
        assert f"warning: cannot read checkpoint {newest} to resume from: " in text
        assert f"resuming from {work_dir / f'iter_{previous}.pth'}, the newest complete checkpoint (1 newer" in text
        assert f"at iteration {previous}" in text

        _wait(reference, tmp_path / "uninterrupted.out", killed=False)
        ours, theirs = _load(work_dir / f"iter_{MAX_ITERS}.pth"), _load(reference_dir / f"iter_{MAX_ITERS}.pth")
        for key in ("state_dict", "optimizer", "param_schedulers"):
            _assert_same(ours[key], theirs[key], key)
        assert ours["meta"]["best_score"] == theirs["meta"]["best_score"]
        assert not list(work_dir.glob(".*.tmp"))
        print(f"{kills} kills, {time.monotonic() - start:.1f} s")
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()


# ------------------------------------------------------------------ in-process: resume choice, full disk
TINY = {"train_cfg.max_iters": 3, "train_cfg.val_interval": 100, "default_hooks.checkpoint.interval": 1,
        "default_hooks.checkpoint.max_keep_ckpts": -1, "train_dataloader.batch_size": 2,
        "train_dataloader.dataset.num_samples": 4, "val_dataloader.dataset.num_samples": 2,
        "default_hooks.logger.interval": 1, "randomness.seed": 0}


def _trainer(work_dir: Path, resume=False, **options):
    from semseg.config import load_config
    from semseg.engine.trainer import Trainer

    torch.set_num_threads(1)
    return Trainer(load_config(str(CONFIG), {**TINY, **options}), work_dir, resume=resume, device="cpu")


def _logged(work_dir: Path) -> str:
    return "".join(path.read_text() for path in sorted(work_dir.glob("*.log")))


def test_a_damaged_byte_in_the_newest_checkpoint_is_found_and_the_previous_used(tmp_path: Path) -> None:
    _trainer(tmp_path, **{"train_cfg.max_iters": 2}).train()
    newest = tmp_path / "iter_2.pth"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # torch.load alone reads this as a wrong weight, without complaint
    newest.write_bytes(bytes(data))
    run = _trainer(tmp_path, resume=True, **{"train_cfg.max_iters": 2})
    run.train()
    log = _logged(tmp_path)
    assert f"warning: checkpoint {newest} is corrupt: its record " in log
    assert "fails its CRC-32 check; trying the checkpoint before it" in log
    assert f"resumed from {tmp_path / 'iter_1.pth'} at iteration 1" in log
    assert _load(newest)["meta"]["iter"] == 2  # rewritten whole by the resumed run


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    (tmp_path / "iter_3.pth").write_bytes(b"garbage")
    (tmp_path / "iter_2.pth").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"no checkpoint in .* can be resumed from: iter_3.pth \(.*\); "
                                           r"iter_2.pth \(.*is empty \(0 bytes\)\)\. Move them away") as info:
        _trainer(tmp_path, resume=True).train()
    assert "weights_only=False" not in str(info.value)  # torch's advice for such a file is not passed on
    assert (tmp_path / "iter_3.pth").read_bytes() == b"garbage"  # nothing overwritten


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (the first part lands)."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one_and_stops(tmp_path, monkeypatch) -> None:
    from semseg.engine import checkpoint

    run = _trainer(tmp_path)
    fdopen = os.fdopen

    def filling_up(fd, *args, **kwargs):
        file = fdopen(fd, *args, **kwargs)
        return _FullDisk(file, room=1_000_000) if run.iter == 2 else file

    monkeypatch.setattr(checkpoint.os, "fdopen", filling_up)
    previous = tmp_path / "iter_1.pth"
    with pytest.raises(OSError) as info:
        run.train()
    message = str(info.value)
    assert message.startswith(f"cannot write checkpoint {tmp_path / 'iter_2.pth'}: No space left on device;")
    assert f"the previous checkpoint {previous} is intact" in message and "--resume" in message
    assert message in _logged(tmp_path)
    assert sorted(_checkpoints(tmp_path)) == [1] and not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / "last_checkpoint").read_text().endswith("iter_1.pth")
    digest = hashlib.sha256(previous.read_bytes()).hexdigest()
    assert _load(previous)["meta"]["iter"] == 1

    monkeypatch.undo()  # space freed: --resume continues from the intact checkpoint
    _trainer(tmp_path, resume=True).train()
    assert f"resumed from {previous} at iteration 1" in _logged(tmp_path)
    assert hashlib.sha256(previous.read_bytes()).hexdigest() == digest and sorted(_checkpoints(tmp_path)) == [1, 2, 3]


def test_a_full_disk_while_writing_the_best_checkpoint_keeps_the_previous_best(tmp_path, monkeypatch) -> None:
    from semseg.engine import trainer

    save, scores = trainer.save_checkpoint, iter([10.0, 20.0, 30.0])

    def full_at_the_second_best(obj, path):
        if Path(path).name == "best_aAcc_iter_2.pth":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, path)

    monkeypatch.setattr(trainer, "save_checkpoint", full_at_the_second_best)
    monkeypatch.setattr(trainer, "evaluate", lambda *args, **kwargs: {"aAcc": next(scores), "per_class": {}})
    monkeypatch.setattr(trainer, "format_table", lambda per_class: "")
    run = _trainer(tmp_path, **{"train_cfg.val_interval": 1, "default_hooks.checkpoint.save_best": "aAcc"})
    with pytest.raises(OSError, match=r"cannot write checkpoint .*best_aAcc_iter_2.pth: No space left on device; "
                                      r".*the previous checkpoint .*iter_1.pth is intact"):
        run.train()
    assert [p.name for p in tmp_path.glob("best_*.pth")] == ["best_aAcc_iter_1.pth"]  # the earlier best stays
    assert _load(tmp_path / "best_aAcc_iter_1.pth")["meta"]["iter"] == 1 and sorted(_checkpoints(tmp_path)) == [1]


if __name__ == "__main__":
    split = sys.argv.index("--")
    install_fault(sys.argv[1])
    from semseg.cli import main

    sys.exit(main(sys.argv[split + 1:]))
