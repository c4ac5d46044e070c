"""Trainer details in-process on a tiny synthetic run: best-checkpoint bookkeeping, resume errors,
per-rank RNG states, devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semseg.config import load_config
from semseg.engine.checkpoint import save_checkpoint
from semseg.engine.distributed import init_distributed
from semseg.engine.pretrained import pretrained_source
from semseg.engine.trainer import Trainer

CONFIG = "fcn_r18-d8_1xb8-600_synthetic-96x96"
TINY = {
    "train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 2,
    "train_dataloader.batch_size": 2, "train_dataloader.dataset.num_samples": 4,
    "val_dataloader.dataset.num_samples": 2, "default_hooks.logger.interval": 1,
}


def trainer(work_dir: Path, resume=False, **options) -> Trainer:
    torch.set_num_threads(1)
    return Trainer(load_config(CONFIG, {**TINY, **options}), work_dir, resume=resume, device="cpu")


def test_checkpoint_written_at_a_validation_knows_its_best_score(tmp_path: Path) -> None:
    run = trainer(tmp_path)
    run.train()
    saved = torch.load(tmp_path / "iter_2.pth", weights_only=True)
    assert saved["meta"]["best_score"] == run.best_score == run.last_scores["mIoU"]
    assert saved["meta"]["best_path"] == str(tmp_path / "best_mIoU_iter_2.pth")
    assert (tmp_path / "best_mIoU_iter_2.pth").is_file()
    assert isinstance(saved["rng"], list) and len(saved["rng"]) == 1  # one RNG state per process


def test_save_best_on_a_metric_not_computed_says_which_are(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"save_best='mDice' is not among the validation metrics \['aAcc'"):
        trainer(tmp_path, **{"default_hooks.checkpoint.save_best": "mDice"}).train()


def test_resuming_from_a_weights_only_checkpoint_says_to_use_load_from(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pth"
    save_checkpoint({"state_dict": {}, "meta": {}}, weights)
    with pytest.raises(KeyError, match="not a semseg training checkpoint.*load_from"):
        trainer(tmp_path / "work", resume=weights).train()


def test_resuming_from_a_corrupt_checkpoint_names_it(tmp_path: Path) -> None:
    broken = tmp_path / "iter_4.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*iter_4.pth"):
        trainer(tmp_path / "work", resume=broken).train()


def test_asking_for_cuda_without_it_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        init_distributed("cuda")
    assert init_distributed("cpu")[2] == torch.device("cpu")


def test_pretrained_may_sit_on_the_backbone() -> None:
    assert pretrained_source({"backbone": {"pretrained": "torchvision://resnet18"}}) == "torchvision://resnet18"


def test_save_best_auto_takes_the_class_mean_the_evaluator_computes(tmp_path: Path) -> None:
    run = trainer(tmp_path, **{"default_hooks.checkpoint.save_best": "auto", "val_evaluator.iou_metrics": ["mDice"]})
    run.train()
    assert run.best_path == tmp_path / "best_mDice_iter_2.pth" and run.best_path.is_file()
    assert run.best_score == run.last_scores["mDice"]


def test_the_logged_lr_is_the_one_the_iteration_trained_at(tmp_path: Path) -> None:
    import json

    schedule = [dict(type="PolyLR", eta_min=0.0, power=1.0, begin=0, end=3, by_epoch=False)]
    run = trainer(tmp_path, **{"param_scheduler": schedule, "optim_wrapper.optimizer.lr": 0.1})
    run.train()
    records = [json.loads(line) for line in run.logger.json_path.read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs == pytest.approx([0.1, 0.05])  # iteration 1 at the base rate, iteration 2 one poly step down


def test_on_iteration_reports_each_iteration(tmp_path: Path) -> None:
    run = trainer(tmp_path)
    seen = []
    run.on_iteration = lambda done, total: seen.append((done, total))
    run.train()
    assert seen == [(1, 2), (2, 2)]
