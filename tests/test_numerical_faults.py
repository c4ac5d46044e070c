"""Numerical faults in training: a NaN or inf loss stops the run naming the iteration and the loss term, and
the checkpoint it keeps is the last one whose loss was finite; weights spoilt under a finite loss are never
saved; with float16 AMP a step the loss scaler skips is counted and logged, and training goes on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from semseg.config import load_config
from semseg.engine.trainer import Trainer

CONFIG = "fcn_r18-d8_1xb8-600_synthetic-96x96"
TINY = {"train_cfg.max_iters": 4, "train_cfg.val_interval": 100, "default_hooks.checkpoint.interval": 1,
        "default_hooks.checkpoint.max_keep_ckpts": -1, "train_dataloader.batch_size": 2,
        "train_dataloader.dataset.num_samples": 4, "val_dataloader.dataset.num_samples": 2,
        "default_hooks.logger.interval": 1, "randomness.seed": 0}


def trainer(work_dir: Path, amp: bool = False, check_finite_every: int = 1, **options) -> Trainer:
    torch.set_num_threads(1)
    return Trainer(load_config(CONFIG, {**TINY, **options}), work_dir, amp=amp, device="cpu",
                   check_finite_every=check_finite_every)


def spoil_loss(run: Trainer, at: int, term: str, value: float) -> None:
    """Iteration ``at`` (1-based) computes ``term`` as ``value``."""
    forward = run.module.forward

    def spoilt(*args, **kwargs):
        losses = forward(*args, **kwargs)
        if isinstance(losses, dict) and run.iter + 1 == at:
            losses[term] = losses[term] * value
        return losses

    run.module.forward = spoilt


def logged(work_dir: Path) -> str:
    return "".join(path.read_text() for path in work_dir.glob("*.log"))


def checkpoints(work_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in work_dir.glob("iter_*.pth"))


@pytest.mark.parametrize(("term", "value", "every"), [("decode.loss_ce", math.nan, 1), ("aux.loss_ce", math.inf, 2)])
def test_a_non_finite_loss_stops_naming_iteration_and_term(tmp_path: Path, term: str, value: float,
                                                           every: int) -> None:
    """Iteration 3's loss is non-finite. With check_finite_every=2 (checkpoints every 2, logs every 4) it is
    found at iteration 4, before that iteration's checkpoint is written."""
    options = {} if every == 1 else {"default_hooks.checkpoint.interval": 2, "default_hooks.logger.interval": 4}
    run = trainer(tmp_path, check_finite_every=every, **options)
    spoil_loss(run, at=3, term=term, value=value)
    with pytest.raises(FloatingPointError) as info:
        run.train()
    message = str(info.value)
    assert message.startswith(f"loss became {value} at iteration 3 (decode.loss_ce=")
    assert f"{term}={value}" in message and f"; non-finite: {term}" in message
    assert ("; found at iteration 4 (check_finite_every=2))" in message) == (every == 2)
    assert message.endswith(f"training stopped; the last good checkpoint is {tmp_path / 'iter_2.pth'}")
    assert message in logged(tmp_path)  # the log says why the run ended
    # the kept checkpoint is the last whose loss was finite; the pointer --resume reads names it
    assert checkpoints(tmp_path) == ([1, 2] if every == 1 else [2])
    assert (tmp_path / "last_checkpoint").read_text().endswith("iter_2.pth")
    kept = torch.load(tmp_path / "iter_2.pth", weights_only=True)
    assert kept["meta"]["iter"] == 2
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_a_loss_non_finite_before_any_checkpoint_says_none_was_written(tmp_path: Path) -> None:
    run = trainer(tmp_path)
    spoil_loss(run, at=1, term="decode.loss_ce", value=math.nan)
    with pytest.raises(FloatingPointError, match=r"at iteration 1 \(.*non-finite: decode.loss_ce\); training stopped; no checkpoint was written"):
        run.train()
    assert checkpoints(tmp_path) == []


def test_weights_spoilt_under_a_finite_loss_are_never_saved(tmp_path: Path) -> None:
    """A gradient can be inf while the loss is finite: the step then leaves NaN weights, which must not
    become the newest checkpoint (the next loss would be NaN too, and the kept checkpoint useless)."""
    run = trainer(tmp_path)
    update = run.optim_wrapper.update_params

    def update_then_spoil(loss):
        update(loss)
        if run.iter + 1 == 2:
            with torch.no_grad():
                run.module.decode_head.conv_seg.weight[0, 0] = math.nan

    run.optim_wrapper.update_params = update_then_spoil
    with pytest.raises(FloatingPointError) as info:
        run.train()
    assert str(info.value) == (
        "weights became non-finite at iteration 2 (decode_head.conv_seg.weight) while the loss was still finite "
        "(diverging training, or inf/NaN gradients); no checkpoint written, training stopped; the last good "
        f"checkpoint is {tmp_path / 'iter_1.pth'}")
    assert checkpoints(tmp_path) == [1]


def test_float16_amp_skipped_steps_are_counted_and_logged_not_fatal(tmp_path: Path) -> None:
    run = trainer(tmp_path, amp=True, **{"optim_wrapper.dtype": "float16",
                                         "optim_wrapper.loss_scale": {"init_scale": 16.0}})
    weight = run.module.decode_head.conv_seg.weight
    weight.register_hook(lambda grad: grad * math.inf if run.iter + 1 == 2 else grad)  # iteration 2 overflows
    run.train()
    assert run.iter == 4 and run.skipped_steps == 1
    assert "iteration 2: float16 gradients held inf/NaN, the optimizer step was skipped and the loss scale lowered " \
           "to 8 (1 step(s) skipped in this run)" in logged(tmp_path)
    rows = [json.loads(line) for path in tmp_path.glob("*.jsonl") for line in path.read_text().splitlines()]
    train = {row["iter"]: row for row in rows if row["mode"] == "train"}
    assert [train[i]["skipped_steps"] for i in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert train[1]["loss_scale"] == 16.0 and train[2]["loss_scale"] == 8.0
    states = {i: torch.load(tmp_path / f"iter_{i}.pth", weights_only=True) for i in (1, 2, 3)}
    assert states[3]["meta"]["amp_skipped_steps"] == 1
    params = [name for name, _ in run.module.named_parameters()]
    # the skipped step left every weight as it was; the next one moved them again
    assert all(torch.equal(states[1]["state_dict"][k], states[2]["state_dict"][k]) for k in params)
    assert not torch.equal(states[2]["state_dict"]["decode_head.conv_seg.weight"],
                           states[3]["state_dict"]["decode_head.conv_seg.weight"])
