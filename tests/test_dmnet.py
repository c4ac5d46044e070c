"""DMHead: the batched dynamic convolution against a per-sample loop, shapes, keys, losses, errors."""

from __future__ import annotations

import pytest
import torch

from semseg.build import build
from semseg.models.heads.dm import dynamic_depthwise_conv

NUM_CLASSES = 5
SIZE = (13, 17)


def dm(**kwargs) -> dict:
    return dict(type="DMHead", in_channels=6, channels=4, num_classes=NUM_CLASSES, in_index=1,
                norm_cfg=dict(type="BN")) | kwargs


def feats(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, *SIZE, generator=gen), torch.randn(2, 6, *SIZE, generator=gen)]


def naive_dynamic_conv(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """One sample, one channel, one output position at a time; tap (a, b) of a k x k filter reads the input
    at (i + a - k // 2, j + b - k // 2), zero outside (an even k reaches one further up/left than down/right)."""
    n, c, h, w = x.shape
    k = filters.shape[-1]
    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    for s in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    for a in range(k):
                        for b in range(k):
                            y, z = i + a - k // 2, j + b - k // 2
                            if 0 <= y < h and 0 <= z < w:
                                out[s, ch, i, j] += float(filters[s, ch, a, b]) * float(x[s, ch, y, z])
    return out.float()


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8])  # 8 > the map's height: taps fall outside on both sides
def test_dynamic_conv_matches_per_sample_loop(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(3, 2, 5, 7, generator=gen)
    filters = torch.randn(3, 2, k, k, generator=gen)
    got = dynamic_depthwise_conv(x, filters)
    assert got.shape == x.shape
    assert (got - naive_dynamic_conv(x, filters)).abs().max().item() < 1e-5


def test_dynamic_conv_even_filter_leans_up_left() -> None:
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    filters = torch.zeros(1, 1, 2, 2)
    filters[0, 0, 0, 0] = 1.0  # the top-left tap reads (i - 1, j - 1)
    out = dynamic_depthwise_conv(x, filters)
    assert out[0, 0, 2, 2] == 1.0 and out.sum() == 1.0


def test_dynamic_conv_keeps_samples_apart() -> None:
    """Sample 1's filters are zero, so its output is zero whatever sample 0 holds."""
    x = torch.randn(2, 3, 4, 5)
    filters = torch.randn(2, 3, 3, 3)
    filters[1] = 0
    out = dynamic_depthwise_conv(x, filters)
    assert out[1].abs().max() == 0 and out[0].abs().max() > 0


@pytest.mark.parametrize("kwargs", [dict(), dict(fusion=True), dict(filter_sizes=(2, 4, 9)),
                                    dict(align_corners=True), dict(norm_cfg=dict(type="GN", num_groups=2))])
def test_forward_shape_and_backward(kwargs: dict) -> None:
    torch.manual_seed(0)
    head = build("head", dm(**kwargs))
    inputs = [f.requires_grad_() for f in feats()]
    out = head(inputs)
    assert out.shape == (2, NUM_CLASSES, *SIZE)
    out.square().mean().backward()
    assert inputs[1].grad.abs().sum() > 0 and inputs[0].grad is None
    # the generated filters are differentiable: filter_gen_conv learns
    assert all(dcm.filter_gen_conv.weight.grad.abs().sum() > 0 for dcm in head.dcm_modules)


def test_keys_follow_filter_sizes_norm_and_fusion() -> None:
    keys = set(build("head", dm(filter_sizes=(1, 3), fusion=True)).state_dict())
    assert {"dcm_modules.1.filter_gen_conv.weight", "dcm_modules.1.filter_gen_conv.bias",
            "dcm_modules.1.input_redu_conv.bn.running_mean", "dcm_modules.1.norm.running_var",
            "dcm_modules.1.fusion_conv.conv.weight", "bottleneck.bn.weight"} <= keys
    assert not any(k.startswith("dcm_modules.2.") for k in keys)
    gn = set(build("head", dm(norm_cfg=dict(type="GN", num_groups=2))).state_dict())
    assert "dcm_modules.0.norm.weight" in gn and "dcm_modules.0.input_redu_conv.gn.weight" in gn
    plain = build("head", dm(norm_cfg=None))
    assert plain.dcm_modules[0].norm is None and not any(".norm." in k for k in plain.state_dict())
    assert not any("fusion_conv" in k for k in build("head", dm()).state_dict())


def test_loss_keys() -> None:
    torch.manual_seed(0)
    head = build("head", dm())
    labels = torch.randint(0, NUM_CLASSES, (2, 8 * SIZE[0], 8 * SIZE[1]))
    losses = head.loss(feats(), labels)
    assert set(losses) == {"loss_ce", "acc_seg"}
    assert torch.isfinite(losses["loss_ce"])


@pytest.mark.parametrize("filter_sizes, error", [(3, TypeError), ((1, 0), ValueError), ((3.0,), ValueError)])
def test_bad_filter_sizes(filter_sizes, error: type[Exception]) -> None:
    with pytest.raises(error, match="filter_sizes"):
        build("head", dm(filter_sizes=filter_sizes))
