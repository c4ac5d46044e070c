"""Distributed faults, on two Gloo processes on the CPU: a process that raises, is killed or hangs ends the
whole job with a non-zero status and a message naming the failed rank, within a bounded time; a loss key
that one rank reports and the other does not cannot deadlock the reduction of the logged losses; and
validation on a dataset whose size does not divide by the number of processes counts every image once.

Three kinds of checks: plain functions in this process; a two-process Gloo group started here with
``torch.multiprocessing`` (quick: no torchrun agent), for the reductions and the collective time-out; and
whole ``torchrun`` jobs. For those, this file is also the worker script (``torchrun ...
test_distributed_faults.py FAULT -- semseg args``): it injects FAULT into one rank's training, then runs
``semseg``. The product has no test hook.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "semseg" / "configs" / "synthetic" / "fcn_r18-d8_1xb8-600_synthetic-96x96.py"
OPTIONS = ["train_cfg.max_iters=6", "train_cfg.val_interval=100", "default_hooks.checkpoint.interval=100",
           "train_dataloader.batch_size=2", "train_dataloader.dataset.num_samples=8",
           "val_dataloader.dataset.num_samples=3", "default_hooks.logger.interval=1", "randomness.seed=0"]
FAULT_ITER = 3  # the iteration in which the faulty rank fails
HANG_TIMEOUT_S = 5  # SEMSEG_DIST_TIMEOUT for the job whose rank hangs


# ------------------------------------------------------------------------------------------- the driver
def install_fault(spec: str) -> None:
    """``KIND@RANK``: in training iteration FAULT_ITER, process RANK fails in its forward.

    ``raise``: a RuntimeError. ``kill``: SIGKILL to itself (a crash: no clean-up). ``hang``: sleeps an hour
    (stuck outside any collective). ``extra_key``: no failure; from that iteration on, its loss dict has one
    more term, ``decode.loss_extra`` (zero, so training is unchanged), which the other rank never has.
    """
    from semseg.models.segmentor import EncoderDecoder

    kind, _, rank = spec.partition("@")
    if int(os.environ["RANK"]) != int(rank):
        return
    loss, calls = EncoderDecoder.loss, [0]

    def faulty_loss(self, x, labels):
        calls[0] += 1
        if calls[0] == FAULT_ITER:
            if kind == "raise":
                raise RuntimeError(f"injected fault in iteration {FAULT_ITER}")
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "hang":
                time.sleep(3600)
        losses = loss(self, x, labels)
        if kind == "extra_key" and calls[0] >= FAULT_ITER:
            losses["decode.loss_extra"] = 0 * losses["decode.loss_ce"]
        return losses

    EncoderDecoder.loss = faulty_loss


# ------------------------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def _torchrun(work_dir: Path, fault: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """A two-process training job with ``fault`` injected; (the finished process, seconds it took)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", __file__, fault, "--", "train", str(CONFIG), "--work-dir",
               str(work_dir), "--device", "cpu", "--cfg-options", *OPTIONS]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=150)
    return proc, time.monotonic() - start


def _logged_iterations(work_dir: Path) -> list[int]:
    """The training iterations rank 0 logged (one log per iteration)."""
    rows = [json.loads(line) for path in work_dir.glob("*.jsonl") for line in path.read_text().splitlines()]
    return [row["iter"] for row in rows if row["mode"] == "train"]


def _root_cause(stderr: str) -> str:
    """The "Root Cause" section of torchrun's closing summary."""
    assert "Root Cause (first observed failure)" in stderr, stderr[-3000:]
    return stderr.split("Root Cause (first observed failure)")[1]


def _tiny_eval(num_samples: int):
    """(model, loader, metric) for scoring the synthetic val set of ``num_samples`` images, the model's
    weights drawn from seed 0 (the same on every process)."""
    from semseg.build import build
    from semseg.config import load_config
    from semseg.engine.evaluate import build_eval_loader, build_metric

    cfg = load_config(str(CONFIG), {"val_dataloader.dataset.num_samples": num_samples,
                                    "val_dataloader.batch_size": 2})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build("segmentor", cfg.model.to_dict()).eval()
    loader = build_eval_loader(cfg.val_dataloader.to_dict())
    return model, loader, build_metric(cfg.val_evaluator, loader.dataset)


# ------------------------------------------------------------------------------- two processes, in-process
def _group_worker(rank: int, port: int, out_dir: str) -> None:
    """One of two Gloo processes (the group fixture starts both: one start-up for three tests): reduce
    losses with different keys, evaluate uneven shards, then let a collective time out (rank 1 stays away
    from it). Results go to ``out_dir/rank<R>.json``."""
    from semseg.engine import distributed
    from semseg.engine.evaluate import evaluate

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), SEMSEG_DIST_TIMEOUT="2")
    torch.set_num_threads(1)
    distributed.init_distributed("cpu")
    out, result = Path(out_dir), {}
    losses = {"decode.loss_ce": torch.tensor(1.0 + rank), "decode.acc_seg": torch.tensor(50.0 + 10 * rank)}
    if rank == 1:
        losses = {"decode.loss_extra": torch.tensor(4.0), **losses}
    result["means"] = distributed.mean_over_processes(losses)
    result["no_losses"] = distributed.mean_over_processes({"aux.loss_ce": torch.tensor(2.0)} if rank else {})
    for num_samples in (5, 1):
        model, loader, metric = _tiny_eval(num_samples)
        evaluate(model, loader, metric, torch.device("cpu"))
        result[f"eval_{num_samples}"] = {"local": len(list(loader.sampler)), "num_images": metric.num_images,
                                         "counts": metric.counts.tolist()}
    released = out / "released"
    if rank == 0:
        start = time.monotonic()
        try:
            torch.distributed.all_reduce(torch.ones(1))
            result["timeout"] = None
        except RuntimeError as error:
            result["timeout"] = {"seconds": time.monotonic() - start,
                                 "message": distributed.describe_failure(error)}
        released.write_text("")
    else:
        deadline = time.monotonic() + 60
        while not released.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    distributed.cleanup(wait=False)  # after a time-out the group cannot be waited on


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("group")
    context = torch.multiprocessing.start_processes(_group_worker, args=(_free_port(), str(out_dir)),
                                                    nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("the two-process group did not finish within 120 s")
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_a_loss_key_on_one_rank_only_is_averaged_over_the_ranks_that_have_it(group):
    expected = {"decode.loss_ce": 1.5, "decode.acc_seg": 55.0, "decode.loss_extra": 4.0}
    for result in group:
        assert result["means"] == expected
        # rank 0's keys first
        assert list(result["means"]) == ["decode.loss_ce", "decode.acc_seg", "decode.loss_extra"]
        assert result["no_losses"] == {"aux.loss_ce": 2.0}  # a rank with nothing to report takes part too


@pytest.fixture
def one_thread():
    """One intra-op thread while the test runs (threads spinning on a busy machine are slow)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_validation_on_uneven_shards_counts_every_image_once(group, one_thread):
    """5 images: ranks score 3 and 2; 1 image: rank 1 scores none. The summed counts are one process's."""
    from semseg.engine.evaluate import evaluate

    for num_samples, shares in ((5, [3, 2]), (1, [1, 0])):
        model, loader, metric = _tiny_eval(num_samples)
        evaluate(model, loader, metric, torch.device("cpu"))
        assert metric.num_images == num_samples
        assert [result[f"eval_{num_samples}"]["local"] for result in group] == shares
        for result in group:
            assert result[f"eval_{num_samples}"]["num_images"] == num_samples
            assert result[f"eval_{num_samples}"]["counts"] == metric.counts.tolist()
        assert metric.counts[3].sum() == num_samples * 128 * 128  # label area: each pixel of each image once


def test_a_collective_without_its_peer_fails_after_the_timeout(group):
    timeout = group[0]["timeout"]
    assert timeout is not None, "the all-reduce without rank 1 returned"
    assert 1.5 < timeout["seconds"] < 15  # SEMSEG_DIST_TIMEOUT=2
    assert timeout["message"].startswith("rank 0 of 2: no answer from another process")
    assert "SEMSEG_DIST_TIMEOUT" in timeout["message"]


# ------------------------------------------------------------------------------------------- plain functions
def test_collective_timeout_from_the_environment_then_the_config(monkeypatch):
    from semseg.engine.distributed import collective_timeout

    monkeypatch.delenv("SEMSEG_DIST_TIMEOUT", raising=False)
    assert collective_timeout().total_seconds() == 1800
    assert collective_timeout({"backend": "nccl", "timeout": 90}).total_seconds() == 90
    monkeypatch.setenv("SEMSEG_DIST_TIMEOUT", "12.5")
    assert collective_timeout({"timeout": 90}).total_seconds() == 12.5
    for bad in ("soon", "0", "-3", "inf"):
        monkeypatch.setenv("SEMSEG_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match=f"SEMSEG_DIST_TIMEOUT must be a positive number .* got '{bad}'"):
            collective_timeout()
    monkeypatch.delenv("SEMSEG_DIST_TIMEOUT")
    with pytest.raises(ValueError, match="env_cfg.dist_cfg.timeout must be a positive"):
        collective_timeout({"timeout": "ten"})


def test_failure_messages_name_the_rank_and_explain_lost_peers(monkeypatch):
    from torch.distributed import DistBackendError

    from semseg.engine.distributed import describe_failure

    lost = DistBackendError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1234")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert describe_failure(ValueError("bad label")) == "bad label"  # one process: as it was
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert describe_failure(ValueError("bad label")) == "rank 1 of 2: bad label"
    assert describe_failure(lost).startswith("rank 1 of 2: lost the connection to another process, which")
    # a time-out that is not a collective's (a data-loader worker's) is not explained as one
    assert describe_failure(RuntimeError("DataLoader timed out after 5 seconds")) == \
        "rank 1 of 2: DataLoader timed out after 5 seconds"


def test_the_recorded_failure_is_what_torchrun_reports(monkeypatch, tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from semseg.engine.distributed import record_failure

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    record_failure(KeyError("model.decode_head.num_classes"))
    failure = ProcessFailure(local_rank=1, pid=123, exitcode=1, error_file=str(tmp_path / "error.json"))
    reported = failure.message["extraInfo"]["py_callstack"]
    assert reported == "rank 1 of 2: KeyError: 'model.decode_head.num_classes'"
    assert abs(failure.timestamp - time.time()) < 60


def test_eval_shards_cover_every_index_once():
    from semseg.data.loader import DefaultSampler

    for size in range(10):
        for world in range(1, 5):
            shards = [list(DefaultSampler(range(size), shuffle=False, seed=0, round_up=False, rank=rank,
                                          world_size=world)) for rank in range(world)]
            assert sorted(sum(shards, [])) == list(range(size)), (size, world)
            assert [len(DefaultSampler(range(size), seed=0, round_up=False, rank=rank, world_size=world))
                    for rank in range(world)] == [len(shard) for shard in shards]
    padded = [list(DefaultSampler(range(5), shuffle=False, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert sum(map(len, padded)) == 6  # what round_up (training's default) does: one image twice


def test_the_eval_loader_neither_pads_nor_drops(tmp_path):
    """A val config with a training sampler and drop_last still scores each image once."""
    from semseg.config import load_config
    from semseg.engine.evaluate import build_eval_loader

    cfg = load_config(str(CONFIG), {"val_dataloader.dataset.num_samples": 5, "val_dataloader.batch_size": 2,
                                    "val_dataloader.drop_last": True,
                                    "val_dataloader.sampler": {"type": "InfiniteSampler", "shuffle": True}})
    loader = build_eval_loader(cfg.val_dataloader.to_dict())
    assert list(loader.sampler) == [0, 1, 2, 3, 4]
    assert [len(batch["inputs"]) for batch in loader] == [2, 2, 1]


# ------------------------------------------------------------------------------------------- torchrun jobs
def test_a_raising_rank_ends_the_job_naming_it(tmp_path):
    proc, seconds = _torchrun(tmp_path / "work", "raise@1")
    assert proc.returncode != 0
    assert seconds < 60
    assert re.search(r"semseg: error: (rank 1 of 2: )?injected fault in iteration 3", proc.stderr)
    assert _logged_iterations(tmp_path / "work") == [1, 2]
    cause = _root_cause(proc.stderr)
    assert "rank      : 1 (local_rank: 1)" in cause
    assert "rank 1 of 2: RuntimeError: injected fault in iteration 3" in cause  # semseg's record of it
    assert not (tmp_path / "work" / "iter_6.pth").exists()


def test_a_killed_rank_ends_the_job_naming_it(tmp_path):
    proc, seconds = _torchrun(tmp_path / "work", "kill@1")
    assert proc.returncode != 0
    assert seconds < 60
    cause = _root_cause(proc.stderr)
    assert "rank      : 1 (local_rank: 1)" in cause and "SIGKILL" in cause
    assert _logged_iterations(tmp_path / "work") == [1, 2]


def test_a_hanging_rank_ends_the_job_after_the_timeout(tmp_path):
    """Rank 1 sleeps in its forward; rank 0 waits for it in DDP's gradient all-reduce for SEMSEG_DIST_TIMEOUT
    seconds, then fails and torchrun stops rank 1."""
    proc, seconds = _torchrun(tmp_path / "work", "hang@1", SEMSEG_DIST_TIMEOUT=str(HANG_TIMEOUT_S))
    assert proc.returncode != 0
    assert seconds < 60
    assert _logged_iterations(tmp_path / "work") == [1, 2]  # timed out in iteration 3, not before
    cause = _root_cause(proc.stderr)
    assert "rank      : 0 (local_rank: 0)" in cause
    assert "rank 0 of 2: " in cause and "no answer from another process" in cause
    assert "rank      : 1 (local_rank: 1)" in proc.stderr.split("Root Cause")[0]  # stopped by torchrun


def test_a_loss_key_on_one_rank_only_does_not_deadlock_training(tmp_path):
    proc, seconds = _torchrun(tmp_path / "work", "extra_key@1", SEMSEG_DIST_TIMEOUT="30")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < 60
    rows = [json.loads(line) for path in (tmp_path / "work").glob("*.jsonl")
            for line in path.read_text().splitlines()]
    train = [row for row in rows if row["mode"] == "train"]
    assert [row["iter"] for row in train] == [1, 2, 3, 4, 5, 6]
    # logged losses are the mean over both ranks; the extra term, which rank 1 alone reports, from then on
    assert ["decode.loss_extra" in row for row in train] == [False, False, True, True, True, True]
    assert all(row["decode.loss_extra"] == 0 for row in train[2:])


if __name__ == "__main__":
    split = sys.argv.index("--")
    install_fault(sys.argv[1])
    from semseg.cli import main

    sys.exit(main(sys.argv[split + 1:]))
