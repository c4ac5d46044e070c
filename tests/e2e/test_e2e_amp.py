"""``semseg train --amp`` on a CPU (bfloat16 autocast): trains and validates with finite losses, and the
losses are those of a lower-precision forward (so autocast was on), close to float32's."""

from __future__ import annotations

import math

import torch
from e2e_helpers import CONFIG, load, records, run_semseg, train_args

import semseg

OPTIONS = ["train_cfg.max_iters=6", "train_cfg.val_interval=6", "randomness.seed=0"]


def test_amp_trains_with_finite_losses(tmp_path):
    run_semseg(*train_args(tmp_path / "amp", *OPTIONS, flags=("--amp", "--device", "cpu")))
    run_semseg(*train_args(tmp_path / "fp32", *OPTIONS, flags=("--device", "cpu")))
    amp = [row for row in records(tmp_path / "amp") if row["mode"] == "train"]
    fp32 = [row for row in records(tmp_path / "fp32") if row["mode"] == "train"]
    assert [row["iter"] for row in amp] == list(range(1, 7))
    for row in amp:
        assert all(math.isfinite(row[key]) for key in ("decode.loss_ce", "aux.loss_ce")), row
    assert [row["mode"] for row in records(tmp_path / "amp")].count("val") == 1
    # Same weights and batch at iteration 1: bfloat16 rounding changes the loss a little, not a lot.
    first_amp, first_fp32 = amp[0]["decode.loss_ce"], fp32[0]["decode.loss_ce"]
    assert first_amp != first_fp32 and abs(first_amp - first_fp32) < 0.05 * first_fp32

    checkpoint = load(tmp_path / "amp" / "iter_6.pth")
    assert all(t.dtype != torch.bfloat16 for t in checkpoint["state_dict"].values())  # float32 master weights
    semseg.init_model(tmp_path / "amp" / CONFIG.name, tmp_path / "amp" / "iter_6.pth")  # strict
