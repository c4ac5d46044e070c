"""CGNet backbone: shapes, stated channels and strides, its blocks against naive references, options."""

from __future__ import annotations

import pytest
import torch

from semseg.build import build
from semseg.models.backbones.cgnet import CGNet, ContextGuidedBlock, GlobalContextExtractor

SMALL = dict(type="CGNet", num_channels=(8, 16, 32), num_blocks=(2, 3), dilations=(2, 4), reductions=(4, 8),
             norm_cfg=dict(type="BN", eps=1e-3, requires_grad=True))


def _small(**overrides) -> CGNet:
    return build("backbone", {**SMALL, **overrides})


@pytest.mark.parametrize("size", [(64, 96), (37, 53)])
def test_features_match_stated_channels_and_strides(size: tuple[int, int]) -> None:
    model = _small().eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = model(x)
    assert model.out_channels == [8 + 3, 2 * 16 + 3, 2 * 32]
    assert model.out_strides == [2, 4, 8]
    for feat, channels, stride in zip(feats, model.out_channels, model.out_strides, strict=True):
        # each stride-2 step rounds up
        assert feat.shape == (2, channels, -(-size[0] // stride), -(-size[1] // stride))


def test_global_context_extractor_matches_reference() -> None:
    gce = GlobalContextExtractor(8, reduction=2)
    x = torch.randn(2, 8, 5, 7)
    pooled = torch.stack([torch.stack([x[n, c].mean() for c in range(8)]) for n in range(2)])
    hidden = torch.relu(pooled @ gce.fc[0].weight.T + gce.fc[0].bias)
    scale = torch.sigmoid(hidden @ gce.fc[2].weight.T + gce.fc[2].bias)
    torch.testing.assert_close(gce(x), x * scale[:, :, None, None])


def test_context_guided_block_residual_and_downsample() -> None:
    block = ContextGuidedBlock(8, 8, dilation=2, reduction=2).eval()
    assert block.skip_connect and not hasattr(block, "bottleneck")
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        out = block(x)
        block.skip_connect = False
        torch.testing.assert_close(out, x + block(x))
    down = ContextGuidedBlock(8, 12, downsample=True, reduction=3, skip_connect=True)
    assert not down.skip_connect  # no residual across a size change
    assert down(torch.randn(2, 8, 9, 11)).shape == (2, 12, 5, 6)
    assert down.activate.weight.numel() == 2 * 12 and down.conv1x1.activate.weight.numel() == 12


def test_prelu_slopes_are_per_channel_and_start_at_zero() -> None:
    model = _small()
    assert model.stem[0].activate.weight.shape == (8,)
    assert model.level1[1].conv1x1.activate.weight.shape == (8,)  # half of 16: the non-downsampling blocks
    assert all(not m.weight.any() for m in model.modules() if isinstance(m, torch.nn.PReLU))


def test_relu_act_cfg_keeps_prelu_in_the_joint_norms() -> None:
    model = _small(act_cfg=dict(type="ReLU"))
    assert isinstance(model.stem[0].activate, torch.nn.ReLU)
    assert isinstance(model.norm_prelu_1[1], torch.nn.PReLU)
    assert model(torch.randn(1, 3, 17, 19))[2].shape == (1, 64, 3, 3)


def test_norm_eval_keeps_batchnorm_frozen() -> None:
    model = _small(norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    before = norms[0].running_mean.clone()
    model(torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(norms[0].running_mean, before)


def test_with_cp_gives_the_same_output_and_gradients() -> None:
    torch.manual_seed(0)
    plain = _small().eval()
    checkpointed = _small(with_cp=True).eval()
    checkpointed.load_state_dict(plain.state_dict())
    x1 = torch.randn(2, 3, 21, 23, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    sum(f.sum() for f in plain(x1)).backward()
    sum(f.sum() for f in checkpointed(x2)).backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("bad", [dict(num_channels=(8, 16)), dict(num_blocks=(3,)), dict(dilations=(2, 4, 8)),
                                 dict(reductions=(1,)), dict(num_blocks=(0, 2)), dict(reductions=(4, 64))])
def test_bad_arguments_are_reported(bad: dict) -> None:
    with pytest.raises(ValueError):
        _small(**bad)


def test_pretrained_and_init_cfg_are_exclusive() -> None:
    with pytest.raises(ValueError, match="either"):
        _small(pretrained="x.pth", init_cfg=dict(type="Pretrained", checkpoint="y.pth"))


def test_zoo_model_loss_with_ignored_pixels() -> None:
    from pathlib import Path

    import semseg
    from semseg.config import load_config

    path = Path(semseg.__file__).parent / "configs" / "cgnet" / "cgnet_fcn_4xb8-60k_cityscapes-512x1024.py"
    model = build("segmentor", load_config(str(path)).model.to_dict()).train()
    labels = torch.randint(0, 19, (2, 33, 41))
    labels[:, :4] = 255  # class-weighted loss still well defined (the oracle raises here)
    losses = model.loss(torch.randn(2, 3, 33, 41), labels)
    assert set(losses) == {"decode.loss_ce", "decode.acc_seg"} and torch.isfinite(losses["decode.loss_ce"])
