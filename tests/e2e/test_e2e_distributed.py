"""Two processes under torchrun (Gloo, CPU): the run finishes, only rank 0 writes, the validation score is
the score of the checkpoint rank 0 saved (counts summed over uneven shards), and the checkpoint loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from e2e_helpers import CONFIG, REPO, checkpoints, env, free_port, load, records, run_semseg

import semseg

MAX_ITERS = 40
VAL_IMAGES = 5  # odd: rank 0 scores 3 images, rank 1 scores 2
OPTIONS = ["train_dataloader.batch_size=2", "default_hooks.logger.interval=1", f"train_cfg.max_iters={MAX_ITERS}",
           "train_cfg.val_interval=20", "default_hooks.checkpoint.interval=20",
           f"val_dataloader.dataset.num_samples={VAL_IMAGES}", f"test_dataloader.dataset.num_samples={VAL_IMAGES}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``torchrun --nproc_per_node=2 -m semseg.cli train ...`` on a free port; (process, work dir)."""
    work_dir = tmp_path_factory.mktemp("ddp") / "work"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "semseg.cli", "train", str(CONFIG), "--work-dir", str(work_dir),
               "--device", "cpu", "--cfg-options", *OPTIONS]
    proc = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    return proc, work_dir


def test_two_process_run_finishes(run):
    proc, work_dir = run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 process(es)" in (next(work_dir.glob("*.log"))).read_text()


def test_only_rank_0_writes(run):
    _, work_dir = run
    assert len(list(work_dir.glob("*.log"))) == 1 and len(list(work_dir.glob("*.jsonl"))) == 1
    rows = records(work_dir)
    assert [row["iter"] for row in rows if row["mode"] == "train"] == list(range(1, MAX_ITERS + 1))  # once each
    assert [row["iter"] for row in rows if row["mode"] == "val"] == [20, MAX_ITERS]
    assert sorted(checkpoints(work_dir)) == [20, MAX_ITERS]


def test_checkpoint_loads_into_a_fresh_model(run):
    _, work_dir = run
    checkpoint = load(work_dir / f"iter_{MAX_ITERS}.pth")
    assert checkpoint["meta"]["iter"] == MAX_ITERS
    assert not any(key.startswith("module.") for key in checkpoint["state_dict"])  # the model, not the DDP wrapper
    assert len(checkpoint["rng"]) == 2  # each rank's random state, for an exact resume on two processes
    model = semseg.init_model(work_dir / CONFIG.name, work_dir / f"iter_{MAX_ITERS}.pth")  # strict
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, checkpoint["state_dict"][name]), name


def test_validation_scores_the_saved_model(run, tmp_path):
    """The two-process validation equals a one-process ``semseg test`` of rank 0's checkpoint."""
    _, work_dir = run
    val = [row for row in records(work_dir) if row["mode"] == "val"][-1]
    assert val["mIoU"] > 40  # learnt something: a trivial all-background model would agree too easily
    run_semseg("test", work_dir / CONFIG.name, work_dir / f"iter_{MAX_ITERS}.pth", "--work-dir", tmp_path)
    scores = json.loads((tmp_path / "test_metrics.json").read_text())
    assert scores == {key: val[key] for key in scores}


def _torchrun_train(work_dir, *options: str, flags: tuple = (), check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "semseg.cli", "train", str(CONFIG), "--work-dir", str(work_dir),
               "--device", "cpu", *map(str, flags), "--cfg-options", *options]
    proc = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 or not check, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_resume_is_exact(tmp_path):
    """Resuming a two-process run (each rank with its own random stream) from a middle checkpoint ends
    with the weights of the run that went straight through."""
    options = ["train_dataloader.batch_size=2", "train_cfg.max_iters=8", "train_cfg.val_interval=100",
               "default_hooks.checkpoint.interval=4", "val_dataloader.dataset.num_samples=2",
               "randomness.seed=0", "randomness.diff_rank_seed=True", "randomness.deterministic=True"]
    _torchrun_train(tmp_path / "straight", *options)
    _torchrun_train(tmp_path / "resumed", *options, flags=("--resume-from", tmp_path / "straight" / "iter_4.pth"))
    straight = load(tmp_path / "straight" / "iter_8.pth")["state_dict"]
    resumed = load(tmp_path / "resumed" / "iter_8.pth")["state_dict"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    halfway = load(tmp_path / "straight" / "iter_4.pth")["state_dict"]
    assert not all(torch.equal(straight[k], halfway[k]) for k in straight)  # the last 4 iterations did train


def test_a_diverging_two_process_run_stops_on_every_rank(tmp_path):
    """All processes learn of a non-finite loss in the same iteration and stop (none hangs in backward)."""
    proc = _torchrun_train(tmp_path / "work", "train_dataloader.batch_size=2", "train_cfg.max_iters=30",
                           "optim_wrapper.optimizer.lr=1e12", "val_dataloader.dataset.num_samples=2",
                           check=False)
    assert proc.returncode != 0
    # both ranks' messages (their lines may interleave on the shared stderr) name the same iteration
    iterations = re.findall(r"semseg: error: [^(]*? at iteration (\d+)", proc.stderr)
    assert len(iterations) == 2 and len(set(iterations)) == 1 and "loss became" in proc.stderr
