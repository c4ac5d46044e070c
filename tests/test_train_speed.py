"""Trainer speed options on a tiny synthetic run: channels-last, fused/foreach steps, the deferred
non-finite check (same weights; stops naming the first bad iteration), torch.compile (first iteration
logged apart; a compiler failure says so)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from semseg.build import build
from semseg.config import load_config
from semseg.engine.trainer import Trainer

CONFIG = "fcn_r18-d8_1xb8-600_synthetic-96x96"
TINY = {
    "train_cfg.max_iters": 3, "train_cfg.val_interval": 3, "default_hooks.checkpoint.interval": 3,
    "train_dataloader.batch_size": 2, "train_dataloader.dataset.num_samples": 4,
    "val_dataloader.dataset.num_samples": 2, "default_hooks.logger.interval": 1,
    "default_hooks.checkpoint.save_best": None,
}


def trainer(work_dir: Path, options: dict | None = None, **speed) -> Trainer:
    torch.set_num_threads(1)
    return Trainer(load_config(CONFIG, {**TINY, **(options or {})}), work_dir, device="cpu", **speed)


def weights(work_dir: Path, iteration: int = 3) -> dict[str, torch.Tensor]:
    return torch.load(work_dir / f"iter_{iteration}.pth", weights_only=True)["state_dict"]


def test_channels_last_trains_in_nhwc_and_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    run = trainer(tmp_path / "nhwc", channels_last=True)
    conv = run.module.backbone.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    layouts = []
    run.module.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    run.train()
    assert layouts[:3] == [True] * 3  # the training batches (validation follows)
    trainer(tmp_path / "plain").train()
    nhwc, plain = weights(tmp_path / "nhwc"), weights(tmp_path / "plain")
    model = build("segmentor", load_config(CONFIG).model.to_dict())
    model.load_state_dict(nhwc)  # strict: same keys
    for key in plain:  # same training, rounded differently by the NHWC kernels
        torch.testing.assert_close(nhwc[key].float(), plain[key].float(), rtol=1e-3, atol=1e-3, msg=key)
    log = next((tmp_path / "plain").glob("*.log")).read_text()
    assert re.search(r"first iteration: \d+\.\d+ s \(warm-up included\)", log)


def test_fused_optimizer_reaches_the_optimizer_and_the_config_can_refuse_it(tmp_path: Path) -> None:
    assert trainer(tmp_path, fused_optimizer=True).optim_wrapper.optimizer.param_groups[0]["foreach"] is True
    refused = trainer(tmp_path, {"optim_wrapper.optimizer.foreach": False}, fused_optimizer=True)
    assert refused.optim_wrapper.optimizer.param_groups[0]["foreach"] is False
    assert not refused.optim_wrapper.optimizer.param_groups[0]["fused"]
    assert trainer(tmp_path).optim_wrapper.optimizer.param_groups[0]["foreach"] is None


def test_deferred_finite_check_trains_the_same_weights(tmp_path: Path) -> None:
    trainer(tmp_path / "every", {"default_hooks.logger.interval": 10}).train()
    trainer(tmp_path / "deferred", {"default_hooks.logger.interval": 10}, check_finite_every=2).train()
    every, deferred = weights(tmp_path / "every"), weights(tmp_path / "deferred")
    assert all(torch.equal(every[key], deferred[key]) for key in every)


def test_deferred_finite_check_stops_at_a_check_naming_the_first_bad_iteration(tmp_path: Path) -> None:
    diverging = {"optim_wrapper.optimizer.lr": 1e12, "train_cfg.max_iters": 20, "train_cfg.val_interval": 100,
                 "default_hooks.checkpoint.interval": 100, "default_hooks.logger.interval": 100}
    with pytest.raises(FloatingPointError) as every:
        trainer(tmp_path / "every", diverging).train()
    first = int(re.search(r"loss became \S+ at iteration (\d+) \(", str(every.value)).group(1))
    assert 1 < first < 20
    with pytest.raises(FloatingPointError) as deferred:
        trainer(tmp_path / "deferred", diverging, check_finite_every=4).train()
    match = re.search(r"loss became (\S+) at iteration (\d+) \(decode\.loss_ce=.*; found at iteration (\d+) "
                      r"\(check_finite_every=4\)\); training stopped", str(deferred.value))
    assert match, str(deferred.value)
    assert match.group(1) in ("nan", "inf", "-inf") and int(match.group(2)) == first
    assert int(match.group(3)) == 4 * -(-first // 4)  # the next multiple of 4
    with pytest.raises(ValueError, match="check_finite_every must be >= 1"):
        trainer(tmp_path, check_finite_every=0)


def test_compile_logs_its_first_iteration_apart_and_names_compiler_failures(tmp_path: Path) -> None:
    """The eager backend: Dynamo traces the forward (the plumbing), with no C++ compilation."""
    run = trainer(tmp_path, {"train_cfg.max_iters": 2, "train_cfg.val_interval": 2,
                             "default_hooks.checkpoint.interval": 2}, compile=dict(backend="eager"))
    run.train()
    assert run.model is not run.module and run.first_iter_time > 0
    assert set(weights(tmp_path, 2)) == set(run.module.state_dict())  # no "_orig_mod." prefix
    log = next(tmp_path.glob("*.log")).read_text()
    assert re.search(r"first iteration: \d+\.\d+ s \(torch.compile's compilation included\)", log)

    failed = r"torch.compile failed on this machine \(TorchDynamoException: no cc\)"
    with pytest.raises(RuntimeError, match=failed), run._compile_errors(first=True):
        raise torch._dynamo.exc.TorchDynamoException("no cc\nmore")
    with pytest.raises(ValueError, match="^unrelated$"), run._compile_errors(first=True):
        raise ValueError("unrelated")
    with pytest.raises(TypeError, match="compile must be a bool or a dict"):
        trainer(tmp_path, compile="max-autotune")
