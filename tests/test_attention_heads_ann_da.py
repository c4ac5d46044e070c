"""SelfAttentionBlock against a naive per-position reference; ANNHead and DAHead shapes, keys, losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.models.heads.ann import PyramidPoolConcat
from semseg.models.heads.da import ChannelAttention, PositionAttention
from semseg.nn.conv_module import ConvModule
from semseg.nn.self_attention import SelfAttentionBlock, build_project

NUM_CLASSES = 5


def naive_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """query (N, C, H, W), key (N, C, ...), value (N, Cv, ...) -> (N, Cv, H, W), one query position at a time."""
    n, _, h, w = query.shape
    keys, values = key.flatten(2), value.flatten(2)
    out = torch.zeros(n, value.shape[1], h, w, dtype=torch.float64)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                scores = [scale * float((query[b, :, i, j] * keys[b, :, t]).sum()) for t in range(keys.shape[2])]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for t, wt in enumerate(weights):
                    out[b, :, i, j] += wt / total * values[b, :, t].double()
    return out.float()


def randomize_zero_params_(module: nn.Module, seed: int = 0) -> None:
    """Zero-initialized parameters (out_project, gamma) get random values so they take part in the tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.abs().sum() > 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


BLOCK_CASES = {
    "plain": dict(),
    "matmul_norm": dict(matmul_norm=True),
    "share_key_query": dict(share_key_query=True, matmul_norm=True),
    "no_out": dict(with_out=False),
    "query_downsample": dict(query_downsample=nn.MaxPool2d(2)),
    "key_downsample": dict(key_downsample=nn.AvgPool2d(2), matmul_norm=True),
    "key_pyramid": dict(key_downsample=PyramidPoolConcat((1, 2, 3))),
    "two_convs_norm": dict(key_query_num_convs=2, value_out_num_convs=2, key_query_norm=True, value_out_norm=True,
                           norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU")),
}


@pytest.mark.parametrize("name", list(BLOCK_CASES))
def test_self_attention_matches_naive_reference(name: str) -> None:
    kwargs = BLOCK_CASES[name]
    torch.manual_seed(0)
    key_in = 6 if kwargs.get("share_key_query") else 5
    block = SelfAttentionBlock(key_in, 6, 4, 7, **kwargs).eval()
    randomize_zero_params_(block)
    gen = torch.Generator().manual_seed(1)
    query_feats = torch.randn(2, 6, 7, 9, generator=gen)
    key_feats = torch.randn(2, key_in, 6, 8, generator=gen)

    with torch.no_grad():
        out = block(query_feats, key_feats)
        query = block.query_project(query_feats)
        if block.query_downsample is not None:
            query = block.query_downsample(query)
        key, value = block.key_project(key_feats), block.value_project(key_feats)
        if block.key_downsample is not None:
            key, value = block.key_downsample(key), block.key_downsample(value)
        scale = 4**-0.5 if kwargs.get("matmul_norm") else 1.0
        expected = naive_attention(query, key, value, scale)
        if block.out_project is not None:
            expected = block.out_project(expected)
    assert out.shape == (2, 7, *query.shape[2:])
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_self_attention_query_downsample_gives_the_smaller_map() -> None:
    block = SelfAttentionBlock(5, 6, 4, 7, query_downsample=nn.MaxPool2d(2))
    assert block(torch.randn(2, 6, 9, 13), torch.randn(2, 5, 4, 4)).shape == (2, 7, 4, 6)


def test_self_attention_keys_and_init() -> None:
    block = SelfAttentionBlock(5, 6, 4, 7, key_query_norm=True, norm_cfg=dict(type="BN"))
    keys = set(block.state_dict())
    assert {"key_project.conv.weight", "key_project.bn.running_var", "query_project.conv.weight",
            "value_project.weight", "value_project.bias", "out_project.weight", "out_project.bias"} <= keys
    assert not block.out_project.weight.any() and not block.out_project.bias.any()  # a new block adds nothing

    deep = SelfAttentionBlock(5, 6, 4, 7, key_query_num_convs=2, value_out_num_convs=2, value_out_norm=True,
                              norm_cfg=dict(type="BN"))
    assert isinstance(deep.key_project, nn.Sequential) and len(deep.key_project) == 2
    assert "out_project.1.conv.weight" in deep.state_dict()
    assert deep.out_project[0].conv.weight.any()  # only a single plain-conv out projection starts at zero

    no_out = SelfAttentionBlock(5, 6, 4, 7, with_out=False)
    assert no_out.out_project is None and no_out.value_project.out_channels == 7


def test_self_attention_share_key_query() -> None:
    block = SelfAttentionBlock(6, 6, 4, 6, share_key_query=True)
    assert block.query_project is block.key_project
    keys = set(block.state_dict())
    assert {"key_project.weight", "query_project.weight"} <= keys  # both names, as in MMSegmentation
    assert len(list(block.parameters())) == 6  # shared projection counted once
    with pytest.raises(ValueError, match="share_key_query"):
        SelfAttentionBlock(5, 6, 4, 6, share_key_query=True)


def test_build_project_needs_a_conv() -> None:
    with pytest.raises(ValueError, match="num_convs"):
        build_project(4, 4, 0, False)
    assert isinstance(build_project(4, 8, 1, True, norm_cfg=dict(type="BN")), ConvModule)


def test_pyramid_pool_concat() -> None:
    x = torch.randn(2, 3, 7, 9)
    out = PyramidPoolConcat((1, 2))(x)
    assert out.shape == (2, 3, 5)
    torch.testing.assert_close(out[:, :, 0], x.mean(dim=(2, 3)))
    torch.testing.assert_close(out[:, :, 1], x[:, :, :4, :5].mean(dim=(2, 3)))  # top-left of the 2x2 bins


def test_channel_attention_matches_naive_reference() -> None:
    cam = ChannelAttention()
    assert cam.gamma.scale.item() == 0.0
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(cam(x), x)
    with torch.no_grad():
        cam.gamma.scale.fill_(0.7)
        out = cam(x)
    expected = torch.empty_like(x)
    for b in range(2):
        flat = x[b].reshape(4, -1).double()
        for c in range(4):
            energy = [float(flat[c] @ flat[d]) for d in range(4)]
            weights = torch.tensor([math.exp(min(energy) - e) for e in energy], dtype=torch.float64)
            weights /= weights.sum()
            expected[b, c] = (x[b, c].double() + 0.7 * (weights[:, None] * flat).sum(0).reshape(5, 6)).float()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_position_attention_is_residual_self_attention() -> None:
    torch.manual_seed(0)
    pam = PositionAttention(6, 3)
    assert set(pam.state_dict()) == {f"{p}_project.{t}" for p in ("key", "query", "value")
                                     for t in ("weight", "bias")} | {"gamma.scale"}
    assert pam.out_project is None and pam.value_project.out_channels == 6
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(pam(x), x)
    with torch.no_grad():
        pam.gamma.scale.fill_(0.5)
        out = pam(x)
        expected = x + 0.5 * naive_attention(pam.query_project(x), pam.key_project(x), pam.value_project(x), 1.0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def ann_cfg(**kwargs) -> dict:
    cfg = dict(type="ANNHead", in_channels=[12, 16], in_index=[2, 3], channels=8, project_channels=4,
               query_scales=(1,), key_pool_scales=(1, 3, 6, 8), num_classes=NUM_CLASSES, norm_cfg=dict(type="BN"))
    return cfg | kwargs


def da_cfg(**kwargs) -> dict:
    cfg = dict(type="DAHead", in_channels=16, in_index=3, channels=8, pam_channels=4, num_classes=NUM_CLASSES,
               norm_cfg=dict(type="BN"))
    return cfg | kwargs


def make_feats(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, *size, generator=gen) for c, size in ((4, (26, 34)), (8, (13, 17)),
                                                                    (12, (13, 17)), (16, (13, 17)))]


@pytest.mark.parametrize("cfg", [ann_cfg(), ann_cfg(query_scales=(1, 1), key_pool_scales=(1, 2)), da_cfg()],
                         ids=["ann", "ann_two_stages", "da"])
def test_head_shape_and_gradients(cfg: dict) -> None:
    head = build("head", cfg)
    randomize_zero_params_(head)  # out_project and gamma start at zero, which would stop the gradients
    out = head(make_feats())
    assert out.shape == (2, NUM_CLASSES, 13, 17)
    if cfg["type"] == "DAHead":
        out = out + sum(head.loss(make_feats(), torch.randint(0, NUM_CLASSES, (2, 26, 34))).values())
    out.square().mean().backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_ann_keys() -> None:
    keys = set(build("head", ann_cfg(query_scales=(1, 1))).state_dict())
    for prefix in ("fusion.stages.0", "fusion.stages.1", "context.stages.0", "context.stages.1"):
        assert {f"{prefix}.key_project.conv.weight", f"{prefix}.query_project.bn.weight",
                f"{prefix}.value_project.weight", f"{prefix}.out_project.bias"} <= keys
    assert {"fusion.bottleneck.conv.weight", "bottleneck.conv.weight", "context.bottleneck.bn.weight"} <= keys
    assert "fusion.stages.2.key_project.conv.weight" not in keys


def test_ann_bad_arguments() -> None:
    with pytest.raises(ValueError, match="query_scales"):
        build("head", ann_cfg(query_scales=(2,)))
    with pytest.raises(ValueError, match="two inputs"):
        build("head", ann_cfg(in_channels=[8, 12, 16], in_index=[1, 2, 3]))
    with pytest.raises(TypeError):
        build("head", ann_cfg(input_transform="resize_concat"))


def test_da_keys_and_losses() -> None:
    head = build("head", da_cfg(dropout_ratio=0.0))
    keys = set(head.state_dict())
    assert {"pam.gamma.scale", "cam.gamma.scale", "pam.key_project.weight", "pam_in_conv.conv.weight",
            "pam_out_conv.bn.weight", "cam_in_conv.conv.weight", "cam_out_conv.bn.weight", "pam_conv_seg.weight",
            "cam_conv_seg.bias", "conv_seg.weight"} <= keys
    assert not any(k.startswith("pam.out_project") for k in keys)
    feats = make_feats()
    labels = torch.randint(0, NUM_CLASSES, (2, 26, 34))
    losses = head.loss(feats, labels)
    assert list(losses) == ["pam_cam.loss_ce", "pam_cam.acc_seg", "pam.loss_ce", "pam.acc_seg", "cam.loss_ce",
                            "cam.acc_seg"]
    head.eval()
    pam_feat, cam_feat = head.branch_features(feats)
    torch.testing.assert_close(head(feats), head.conv_seg(pam_feat + cam_feat))


def test_da_loss_uses_every_loss_decode_term() -> None:
    loss_decode = [dict(type="CrossEntropyLoss", loss_weight=1.0),
                   dict(type="CrossEntropyLoss", loss_weight=0.5, loss_name="loss_half")]
    head = build("head", da_cfg(dropout_ratio=0.0, loss_decode=loss_decode)).eval()
    losses = head.loss(make_feats(), torch.randint(0, NUM_CLASSES, (2, 26, 34)))
    for prefix in ("pam_cam", "pam", "cam"):
        torch.testing.assert_close(losses[f"{prefix}.loss_half"], 0.5 * losses[f"{prefix}.loss_ce"])
