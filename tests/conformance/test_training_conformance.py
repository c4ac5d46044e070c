"""Training against the oracle: one SGD step of an FCN gives the same losses and weights as MMSegmentation's
model stepped by mmengine's optimizer wrapper, and a checkpoint our Trainer writes loads in MMSegmentation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from oracle import build_oracle_model, oracle_loss, randomize_, require_oracle, save_oracle_state_dict

import semseg
from semseg.config import load_config
from semseg.engine.optim import build_optim_wrapper
from semseg.engine.trainer import Trainer

NORM = dict(type="BN", requires_grad=True)
# A ResNetV1c-18 FCN (D8) with an auxiliary head, 5 classes.
MODEL = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    pretrained=None,
    backbone=dict(type="ResNetV1c", depth=18, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                  strides=(1, 2, 1, 1), norm_cfg=NORM, norm_eval=False, style="pytorch", contract_dilation=True),
    decode_head=dict(type="FCNHead", in_channels=512, in_index=3, channels=128, num_convs=2, concat_input=True,
                     dropout_ratio=0.1, num_classes=5, norm_cfg=NORM, align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type="FCNHead", in_channels=256, in_index=2, channels=64, num_convs=1, concat_input=False,
                        dropout_ratio=0.1, num_classes=5, norm_cfg=NORM, align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
OPTIM_WRAPPER = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005),
                     clip_grad=None)
SYNTHETIC = Path(semseg.__file__).parent / "configs" / "synthetic" / "fcn_r18-d8_1xb8-600_synthetic-96x96.py"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP's spinning threads slow convolutions ~100-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dropout_off(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout | torch.nn.Dropout2d):
            module.p = 0.0


def _total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum MMSegmentation optimizes (``parse_losses``): every term whose key contains 'loss'."""
    return sum(value for key, value in losses.items() if "loss" in key)


def _assert_losses_close(ours: dict, theirs: dict, atol: float) -> None:
    assert set(ours) == set(theirs)
    for key in theirs:
        got, expected = ours[key].item(), theirs[key].item()
        assert abs(got - expected) <= atol, (key, got, expected)


def _assert_states_close(ours: torch.nn.Module, oracle: torch.nn.Module, atol: float) -> None:
    our_state, theirs_state = ours.state_dict(), oracle.state_dict()
    assert set(our_state) == set(theirs_state)
    for name, expected in theirs_state.items():
        torch.testing.assert_close(our_state[name], expected, rtol=0, atol=atol, msg=name)


def test_sgd_steps_match_oracle(tmp_path):
    """Same weights and batch -> same losses; an SGD step (momentum 0.9, weight decay 5e-4) -> same weights
    and BatchNorm statistics; the next forward -> same losses; a second step (momentum now acts) -> same
    weights again."""
    require_oracle()
    from mmengine.optim import build_optim_wrapper as oracle_build_optim_wrapper

    oracle = randomize_(build_oracle_model(MODEL, seed=1), seed=2)
    initial = {k: v.clone() for k, v in oracle.state_dict().items()}
    ours = semseg.init_model({"model": MODEL}, checkpoint=save_oracle_state_dict(oracle, tmp_path / "init.pth"))
    for model in (oracle, ours):
        model.train()
        _dropout_off(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 49, 67, generator=gen)
    labels = torch.randint(0, 5, (2, 49, 67), generator=gen)
    labels[0, :7, :9] = 255  # ignored pixels take part too
    oracle_optim = oracle_build_optim_wrapper(oracle, copy.deepcopy(OPTIM_WRAPPER))
    our_optim = build_optim_wrapper(ours, copy.deepcopy(OPTIM_WRAPPER))

    theirs_losses = oracle_loss(oracle, x, labels)
    our_losses = ours.loss(x, labels)
    assert theirs_losses["decode.loss_ce"].item() > 0.1  # an untrained model's loss, not a degenerate zero
    _assert_losses_close(our_losses, theirs_losses, atol=1e-4)
    oracle_optim.update_params(_total(theirs_losses))
    our_optim.update_params(_total(our_losses))

    moved = max((oracle.state_dict()[k] - v).abs().max().item() for k, v in initial.items() if v.is_floating_point())
    assert moved > 1e-3  # the step changed the weights: comparing them means something
    # 1e-6: weight decay alone moves a weight by lr * 5e-4 * |w| (up to ~7e-6 here), so a tolerance of
    # 1e-5 could not see it missing; the two implementations differ by ~1e-8.
    _assert_states_close(ours, oracle, atol=1e-6)

    theirs_losses = oracle_loss(oracle, x, labels)
    our_losses = ours.loss(x, labels)
    _assert_losses_close(our_losses, theirs_losses, atol=1e-4)
    oracle_optim.update_params(_total(theirs_losses))
    our_optim.update_params(_total(our_losses))
    _assert_states_close(ours, oracle, atol=1e-5)


def test_trainer_checkpoint_loads_in_oracle(tmp_path):
    """A checkpoint our Trainer writes: plain tensors (``weights_only``), a ``meta`` dict, and a state dict
    that MMSegmentation's model of the same config takes strictly (directly and through mmengine)."""
    require_oracle()
    from mmengine.runner import load_checkpoint as oracle_load_checkpoint

    cfg = load_config(SYNTHETIC, ["train_cfg.max_iters=2", "train_dataloader.batch_size=2",
                                  "default_hooks.checkpoint.interval=2", "val_dataloader=None"])
    Trainer(cfg, tmp_path / "work", device="cpu").train()
    path = tmp_path / "work" / "iter_2.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(checkpoint["meta"], dict) and checkpoint["meta"]["iter"] == 2

    oracle = build_oracle_model(cfg.model.to_dict())
    oracle.load_state_dict(checkpoint["state_dict"], strict=True)
    for name, tensor in oracle.state_dict().items():
        assert torch.equal(tensor, checkpoint["state_dict"][name]), name

    fresh = build_oracle_model(cfg.model.to_dict(), seed=3)
    oracle_load_checkpoint(fresh, str(path), map_location="cpu", strict=True)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, checkpoint["state_dict"][name]), name
