"""PointRend: ``point_sample`` against bilinear / nearest arithmetic written here (image borders, both
align_corners), the point head (keys, subdivision, training points by uncertainty, losses, errors) and a narrow
PointRend cascade built from its config."""

from __future__ import annotations

import math

import pytest
import torch

import semseg
from semseg.build import build
from semseg.config import CONFIG_ROOT
from semseg.models.heads.point import uncertainty
from semseg.nn.point_sample import point_sample


def naive_bilinear(x: torch.Tensor, points: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """x (N, C, H, W), points (N, P, 2) in [0, 1] -> (N, C, P); zero outside the map."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, points.shape[1], dtype=torch.float64)
    for b in range(n):
        for p in range(points.shape[1]):
            px, py = points[b, p].double().tolist()
            # pixel coordinates: corner pixel centres at 0 and size - 1 (align_corners) or at 1/2 from the edges
            fx = px * (w - 1) if align_corners else px * w - 0.5
            fy = py * (h - 1) if align_corners else py * h - 0.5
            x0, y0 = math.floor(fx), math.floor(fy)
            for yy, wy in ((y0, 1 - (fy - y0)), (y0 + 1, fy - y0)):
                for xx, wx in ((x0, 1 - (fx - x0)), (x0 + 1, fx - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[b, :, p] += wy * wx * x[b, :, yy, xx].double()
    return out.float()


def naive_nearest(x: torch.Tensor, points: torch.Tensor, align_corners: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.zeros(n, c, points.shape[1])
    for b in range(n):
        for p in range(points.shape[1]):
            px, py = points[b, p].double().tolist()
            fx = px * (w - 1) if align_corners else px * w - 0.5
            fy = py * (h - 1) if align_corners else py * h - 0.5
            xx, yy = round(fx), round(fy)
            if 0 <= yy < h and 0 <= xx < w:
                out[b, :, p] = x[b, :, yy, xx]
    return out


BORDER_POINTS = [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.0], [0.0, 0.37], [1.0, 0.61],
                 [0.02, 0.98], [-0.05, 0.5], [1.04, 0.2]]


@pytest.mark.parametrize("align_corners", [False, True])
def test_point_sample_bilinear_matches_arithmetic(align_corners: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=gen)
    points = torch.cat([torch.tensor([BORDER_POINTS] * 2), torch.rand(2, 30, 2, generator=gen)], dim=1)
    got = point_sample(x, points, align_corners=align_corners)
    assert got.shape == (2, 3, 40)
    assert torch.allclose(got, naive_bilinear(x, points, align_corners), atol=1e-5)
    # the corners: the corner pixel itself with align_corners, a quarter of it (zero padding) without
    corner = x[:, :, 0, 0] if align_corners else x[:, :, 0, 0] / 4
    assert torch.allclose(got[:, :, 0], corner, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_point_sample_nearest_and_grids(align_corners: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 9, (2, 1, 6, 11), generator=gen).float()
    points = torch.rand(2, 50, 2, generator=gen)
    got = point_sample(labels, points, align_corners=align_corners, mode="nearest")
    assert torch.equal(got, naive_nearest(labels, points, align_corners))
    grid = points.view(2, 5, 10, 2)
    assert torch.equal(point_sample(labels, grid, align_corners, mode="nearest").flatten(2), got)


def test_point_sample_rejects_bad_points() -> None:
    with pytest.raises(ValueError, match=r"points must be \(N, P, 2\)"):
        point_sample(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3))


def test_uncertainty_is_minus_the_top_two_margin() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 0.0, -1.0]]).T.reshape(1, 3, 2, 1)  # (N, C, 2, 1)
    assert torch.equal(uncertainty(logits).flatten(), torch.tensor([-0.5, 0.0]))


CE = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)


def point_head(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(type="PointHead", in_channels=[4, 6], in_index=[0, 1], channels=8, num_fcs=3, num_classes=3,
               dropout_ratio=-1, align_corners=False, loss_decode=CE)
    head = build("head", cfg | kwargs)
    head.train_cfg = dict(num_points=40, oversample_ratio=3, importance_sample_ratio=0.75)
    head.test_cfg = dict(subdivision_steps=2, subdivision_num_points=50, scale_factor=2)
    return head


def inputs(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 13, 17, generator=gen), torch.randn(2, 6, 7, 9, generator=gen)], \
        torch.randn(2, 3, 7, 9, generator=gen)


def test_point_head_keys() -> None:
    shapes = {k: tuple(v.shape) for k, v in point_head().state_dict().items()}
    # inputs: 4 + 6 feature channels and 3 coarse logits; each layer's output gets the coarse logits again
    assert shapes == {"fcs.0.conv.weight": (8, 13, 1), "fcs.0.conv.bias": (8,), "fcs.1.conv.weight": (8, 11, 1),
                      "fcs.1.conv.bias": (8,), "fcs.2.conv.weight": (8, 11, 1), "fcs.2.conv.bias": (8,),
                      "fc_seg.weight": (3, 11, 1), "fc_seg.bias": (3,)}
    shapes = {k: tuple(v.shape) for k, v in point_head(coarse_pred_each_layer=False, num_fcs=1).state_dict().items()}
    assert shapes["fc_seg.weight"] == (3, 8, 1)


def test_subdivision_refines_the_most_uncertain_pixels() -> None:
    head = point_head().eval()
    head.test_cfg = dict(subdivision_steps=1, subdivision_num_points=25, scale_factor=2)
    feats, prev = inputs()
    with torch.no_grad():
        refined = head(feats, prev)
    upsampled = torch.nn.functional.interpolate(prev, scale_factor=2, mode="bilinear", align_corners=False)
    assert refined.shape == upsampled.shape == (2, 3, 14, 18)
    changed = (refined != upsampled).any(dim=1).flatten(1)  # (N, h*w)
    most_uncertain = uncertainty(upsampled).flatten(1).topk(25, dim=1).indices
    for b in range(2):
        assert set(changed[b].nonzero().flatten().tolist()) == set(most_uncertain[b].tolist())
    # the replaced values are the point MLP's logits at the pixel centres
    rows, cols = most_uncertain[0] // 18, most_uncertain[0] % 18
    centres = torch.stack([(cols + 0.5) / 18, (rows + 0.5) / 14], dim=1)[None].expand(2, -1, -1)
    with torch.no_grad():
        expected = head.point_logits(feats, prev, centres)[0]
    assert torch.allclose(refined[0].flatten(1)[:, most_uncertain[0]], expected, atol=1e-5)


def test_subdivision_steps_scale_the_output() -> None:
    head = point_head().eval()
    feats, prev = inputs()
    with torch.no_grad():
        assert head(feats, prev).shape == (2, 3, 28, 36)
        head.test_cfg = dict(subdivision_steps=2, subdivision_num_points=10_000, scale_factor=2)
        assert head(feats, prev).shape == (2, 3, 28, 36)  # more points than pixels: all refined


@pytest.mark.parametrize("importance_sample_ratio", [0.0, 0.5, 1.0])
def test_training_points_are_the_most_uncertain_candidates(importance_sample_ratio: float) -> None:
    head = point_head()
    head.train_cfg = dict(num_points=40, oversample_ratio=3, importance_sample_ratio=importance_sample_ratio)
    _, prev = inputs()
    torch.manual_seed(3)
    points = head.sample_train_points(prev)
    torch.manual_seed(3)
    candidates = torch.rand(2, 120, 2)  # the same draw
    assert points.shape == (2, 40, 2) and points.min() >= 0 and points.max() <= 1
    k = int(40 * importance_sample_ratio)
    scores = uncertainty(point_sample(prev, candidates))[:, 0]
    for b in range(2):
        chosen = {tuple(p) for p in points[b, :k].tolist()}
        assert chosen == {tuple(candidates[b, i].tolist()) for i in scores[b].topk(k).indices.tolist()}


def test_point_losses() -> None:
    head = point_head().train()
    feats, prev = inputs()
    prev.requires_grad_(True)
    labels = torch.randint(0, 3, (2, 51, 67))
    losses = head.loss(feats, labels, prev)
    assert set(losses) == {"pointloss_ce", "acc_point"}
    assert 0 <= losses["acc_point"] <= 100
    losses["pointloss_ce"].backward()
    assert prev.grad.abs().sum() > 0 and head.fcs[0].conv.weight.grad.abs().sum() > 0
    all_ignored = head.loss(feats, torch.full((2, 51, 67), 255), prev.detach())
    assert all_ignored["pointloss_ce"] == 0 and all_ignored["acc_point"] == 0


def test_point_head_errors() -> None:
    with pytest.raises(ValueError, match="conv_cfg must be dict"):
        point_head(conv_cfg=None)
    head = point_head()
    feats, prev = inputs()
    head.train_cfg = dict(num_points=40, oversample_ratio=0.5, importance_sample_ratio=0.75)
    with pytest.raises(ValueError, match="oversample_ratio >= 1"):
        head.loss(feats, torch.zeros(2, 51, 67, dtype=torch.long), prev)
    head.train_cfg = {}
    with pytest.raises(KeyError, match="num_points, oversample_ratio, importance_sample_ratio in the segmentor's"):
        head.loss(feats, torch.zeros(2, 51, 67, dtype=torch.long), prev)
    head.test_cfg = dict(mode="whole")
    with pytest.raises(KeyError, match="subdivision_steps"):
        head(feats, prev)


NARROW = {
    "model.backbone.depth": 18,
    "model.backbone.stem_channels": 8,
    "model.backbone.base_channels": 4,
    "model.neck.in_channels": [4, 8, 16, 32],
    "model.neck.out_channels": 8,
    "model.decode_head.0.in_channels": [8, 8, 8, 8],
    "model.decode_head.0.channels": 4,
    "model.decode_head.1.in_channels": [8],
    "model.decode_head.1.channels": 8,
    "model.train_cfg.num_points": 64,
}


def test_point_rend_cascade_from_its_config() -> None:
    model = semseg.init_model(CONFIG_ROOT / "point_rend" / "pointrend_r50_4xb2-80k_cityscapes-512x1024.py",
                              cfg_options=NARROW)
    assert [type(h).__name__ for h in model.decode_head] == ["FPNHead", "PointHead"]
    assert model.decode_head[1].test_cfg["subdivision_num_points"] == 8196
    assert model.decode_head[1].train_cfg["num_points"] == 64
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        assert model.encode_decode(x).shape == (2, 19, 45, 61)
    model.train()
    losses = model.loss(x, torch.randint(0, 19, (2, 45, 61)))
    assert set(losses) == {"decode_0.loss_ce", "decode_0.acc_seg", "decode_1.pointloss_ce", "decode_1.acc_point"}
