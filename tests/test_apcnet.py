"""APCHead: the adaptive context module against a per-position reference, shapes, keys, losses, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.build import build
from semseg.models.heads.apc import AdaptiveContextModule

NUM_CLASSES = 5
SIZE = (13, 17)


def apc(**kwargs) -> dict:
    return dict(type="APCHead", in_channels=6, channels=4, num_classes=NUM_CLASSES, in_index=1,
                norm_cfg=dict(type="BN")) | kwargs


def feats(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, *SIZE, generator=gen), torch.randn(2, 6, *SIZE, generator=gen)]


def naive_acm(module: AdaptiveContextModule, x: torch.Tensor) -> torch.Tensor:
    """The ACM output computed position by position: z_p = sum_k sigmoid(gla(x_p + g))_k * region_k."""
    s = module.pool_scale
    regions = module.pooled_redu_conv(F.adaptive_avg_pool2d(x, s)).flatten(2)  # (N, C, s*s)
    reduced = module.input_redu_conv(x)  # (N, C, h, w)
    context = module.global_info(reduced.mean(dim=(2, 3), keepdim=True))[:, :, 0, 0]  # (N, C)
    weight, bias = module.gla.weight[:, :, 0, 0], module.gla.bias  # (s*s, C), (s*s,)
    n, c, h, w = reduced.shape
    out = torch.zeros(n, c, h, w)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                affinity = torch.sigmoid(weight @ (reduced[b, :, i, j] + context[b]) + bias)  # (s*s,)
                for k in range(s * s):
                    out[b, :, i, j] += affinity[k] * regions[b, :, k]
    out = torch.relu(module.residual_conv(out) + reduced)
    return out if module.fusion_conv is None else module.fusion_conv(out)


@pytest.mark.parametrize("pool_scale, fusion", [(1, True), (2, False), (3, True), (6, False)])
def test_acm_matches_per_position_reference(pool_scale: int, fusion: bool) -> None:
    torch.manual_seed(0)
    module = AdaptiveContextModule(pool_scale, fusion, 6, 4, None, dict(type="BN"), dict(type="ReLU")).eval()
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, expected = module(x), naive_acm(module, x)
    assert got.shape == (2, 4, 5, 7)
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("kwargs", [dict(), dict(fusion=False), dict(pool_scales=(2, 8)),  # 8 > 13/2: overlaps
                                    dict(align_corners=True), dict(norm_cfg=dict(type="GN", num_groups=2))])
def test_forward_shape_and_backward(kwargs: dict) -> None:
    torch.manual_seed(0)
    head = build("head", apc(**kwargs))
    inputs = [f.requires_grad_() for f in feats()]
    out = head(inputs)
    assert out.shape == (2, NUM_CLASSES, *SIZE)
    out.square().mean().backward()
    assert inputs[1].grad.abs().sum() > 0 and inputs[0].grad is None
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


def test_keys_follow_pool_scales_and_fusion() -> None:
    keys = set(build("head", apc(pool_scales=(1, 3))).state_dict())
    assert "acm_modules.1.gla.weight" in keys and "acm_modules.2.gla.weight" not in keys
    assert build("head", apc(pool_scales=(1, 3))).acm_modules[1].gla.weight.shape == (9, 4, 1, 1)
    assert {"acm_modules.0.fusion_conv.conv.weight", "acm_modules.0.residual_conv.bn.running_var",
            "acm_modules.0.global_info.conv.weight", "acm_modules.0.pooled_redu_conv.bn.weight",
            "acm_modules.0.input_redu_conv.conv.weight", "bottleneck.conv.weight"} <= keys
    no_fusion = set(build("head", apc(fusion=False)).state_dict())
    assert not any("fusion_conv" in k for k in no_fusion)
    assert build("head", apc(pool_scales=(1, 3))).bottleneck.conv.weight.shape == (4, 6 + 2 * 4, 3, 3)


def test_loss_keys() -> None:
    torch.manual_seed(0)
    head = build("head", apc())
    labels = torch.randint(0, NUM_CLASSES, (2, 8 * SIZE[0], 8 * SIZE[1]))
    losses = head.loss(feats(), labels)
    assert set(losses) == {"loss_ce", "acc_seg"}
    assert torch.isfinite(losses["loss_ce"])


@pytest.mark.parametrize("pool_scales, error", [(3, TypeError), ((1, 0), ValueError), ((2.0,), ValueError)])
def test_bad_pool_scales(pool_scales, error: type[Exception]) -> None:
    with pytest.raises(error, match="pool_scales"):
        build("head", apc(pool_scales=pool_scales))
