"""Non-local, disentangled non-local and global context blocks vs naive references written with loops over
positions; NLHead, DNLHead and GCHead built from configs (shapes, gradients, key names)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.nn.context_block import ContextBlock
from semseg.nn.non_local import DisentangledNonLocal2d, NonLocal2d

MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
C, H, W = 6, 5, 7


def randomize_weights_(module: nn.Module, seed: int) -> nn.Module:
    """Random parameters and BN statistics everywhere (the zero-initialised output layers included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()


def make_input(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, C, H, W, generator=torch.Generator().manual_seed(seed))


# ---- naive references: one image at a time, positions p = h * W + w, explicit sums -------------------------


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """x (C_in, P) -> (C_out, P)."""
    out = torch.einsum("oc,cp->op", conv.weight[:, :, 0, 0], x)
    return out if conv.bias is None else out + conv.bias[:, None]


def max_pool_2x2(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x (C, height*width) -> (C, (height//2)*(width//2)), the max of each 2x2 cell (odd edges dropped)."""
    grid = x.reshape(-1, height, width)
    cells = [grid[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].amax(dim=(1, 2))
             for i in range(height // 2) for j in range(width // 2)]
    return torch.stack(cells, dim=1)


def eval_bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """x (C, P) through an eval-mode BatchNorm."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean[:, None]) * scale[:, None] + bn.bias[:, None]


def projection(module: nn.Module) -> nn.Conv2d:
    return (module[0] if isinstance(module, nn.Sequential) else module).conv


def naive_non_local(block: NonLocal2d, image: torch.Tensor, disentangled: bool = False) -> torch.Tensor:
    """image (C, H, W) -> (C, H, W), the non-local formula written out per query position."""
    height, width = image.shape[1:]
    x = image.reshape(image.shape[0], -1)  # (C, L)

    def keys_of(t: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(t, height, width) if block.sub_sample else t

    value = keys_of(conv1x1(projection(block.g), x))  # (C', M)
    if block.mode == "gaussian":
        query, key = x, keys_of(x)
    else:
        query, key = conv1x1(block.theta.conv, x), keys_of(conv1x1(projection(block.phi), x))
    if disentangled:
        query = query - query.mean(dim=1, keepdim=True)
        key = key - key.mean(dim=1, keepdim=True)
        if block.mode == "gaussian":
            x = query  # the oracle's in-place whitening of the gaussian queries changes the input too
        mask = conv1x1(block.conv_mask, x)[0]
        unary = torch.exp(mask) / torch.exp(mask).sum()
    num_queries, num_keys = query.shape[1], key.shape[1]
    out = torch.zeros(value.shape[0], num_queries)
    for i in range(num_queries):
        if block.mode == "concatenation":
            w = block.concat_project.conv.weight[0, :, 0, 0]
            weights = torch.stack([torch.relu(w @ torch.cat([query[:, i], key[:, j]])) / num_keys
                                   for j in range(num_keys)])
        else:
            dots = torch.stack([query[:, i] @ key[:, j] for j in range(num_keys)])
            if block.mode == "dot_product":
                weights = dots / num_keys
            else:
                if block.mode == "embedded_gaussian" and block.use_scale:
                    dots = dots / math.sqrt(query.shape[0])
                if block.mode == "embedded_gaussian" and disentangled:
                    dots = dots / block.temperature
                weights = torch.exp(dots - dots.max()) / torch.exp(dots - dots.max()).sum()
        if disentangled:
            weights = weights + unary
        out[:, i] = sum(weights[j] * value[:, j] for j in range(num_keys))
    y = conv1x1(block.conv_out.conv, out)
    if block.conv_out.norm is not None:
        y = eval_bn(block.conv_out.norm, y)
    return (x + y).reshape(-1, height, width)


def naive_context_block(block: ContextBlock, image: torch.Tensor) -> torch.Tensor:
    """image (C, H, W) -> (C, H, W): pool a context vector, transform it, fuse it at every position."""
    x = image.reshape(image.shape[0], -1)
    num_positions = x.shape[1]
    if block.pooling_type == "att":
        mask = conv1x1(block.conv_mask, x)[0]
        weights = torch.exp(mask) / torch.exp(mask).sum()
    else:
        weights = torch.full((num_positions,), 1 / num_positions)
    context = sum(weights[p] * x[:, p] for p in range(num_positions))[:, None]  # (C, 1)

    def transform(seq: nn.Sequential) -> torch.Tensor:
        hidden = conv1x1(seq[0], context)[:, 0]
        ln = seq[1]
        mean, var = hidden.mean(), hidden.var(unbiased=False)
        hidden = (hidden - mean) / torch.sqrt(var + ln.eps) * ln.weight[:, 0, 0] + ln.bias[:, 0, 0]
        return conv1x1(seq[3], torch.relu(hidden)[:, None])  # (C, 1)

    out = x
    if "channel_mul" in block.fusion_types:
        out = out * torch.sigmoid(transform(block.channel_mul_conv))
    if "channel_add" in block.fusion_types:
        out = out + transform(block.channel_add_conv)
    return out.reshape(image.shape)


def run_naive(fn, block: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([fn(block, image, **kwargs) for image in x])


# ---- NonLocal2d ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_scale", [True, False])
@pytest.mark.parametrize("sub_sample", [False, True])
def test_non_local_matches_naive(mode: str, use_scale: bool, sub_sample: bool) -> None:
    block = randomize_weights_(NonLocal2d(C, reduction=2, use_scale=use_scale, mode=mode, sub_sample=sub_sample,
                                          norm_cfg=dict(type="BN")), seed=1)
    x = make_input()
    with torch.no_grad():
        got = block(x)
    expected = run_naive(naive_non_local, block, x)
    assert (got - x).abs().max() > 0.1
    assert torch.allclose(got, expected, atol=1e-5)


def test_use_scale_changes_only_embedded_gaussian() -> None:
    x = make_input(3)
    for mode in MODES:
        scaled = randomize_weights_(NonLocal2d(C, mode=mode, use_scale=True), seed=2)
        plain = NonLocal2d(C, mode=mode, use_scale=False).eval()
        plain.load_state_dict(scaled.state_dict())
        with torch.no_grad():
            same = torch.allclose(scaled(x), plain(x))
        assert same == (mode != "embedded_gaussian"), mode


def test_non_local_without_norm_and_reduction() -> None:
    block = randomize_weights_(NonLocal2d(C, reduction=3, mode="embedded_gaussian"), seed=4)
    assert block.inter_channels == 2
    assert block.conv_out.norm is None and block.conv_out.conv.bias is not None
    x = make_input(5)
    with torch.no_grad():
        assert torch.allclose(block(x), run_naive(naive_non_local, block, x), atol=1e-5)
    assert NonLocal2d(3, reduction=8).inter_channels == 1


@pytest.mark.parametrize("norm_cfg", [None, dict(type="BN")])
def test_fresh_non_local_is_identity(norm_cfg: dict | None) -> None:
    x = make_input(6)
    for mode in MODES:
        block = NonLocal2d(C, mode=mode, norm_cfg=norm_cfg).eval()
        assert torch.equal(block(x), x)
        assert not torch.equal(NonLocal2d(C, mode=mode, norm_cfg=norm_cfg, zeros_init=False).eval()(x), x)


def test_non_local_keys() -> None:
    def keys(**kwargs) -> set[str]:
        return set(NonLocal2d(4, norm_cfg=dict(type="BN"), **kwargs).state_dict())

    out = {"conv_out.conv.weight", "conv_out.bn.weight", "conv_out.bn.bias", "conv_out.bn.running_mean",
           "conv_out.bn.running_var", "conv_out.bn.num_batches_tracked"}
    proj = {f"{name}.conv.{p}" for name in ("g", "theta", "phi") for p in ("weight", "bias")}
    assert keys() == proj | out
    assert keys(mode="gaussian") == {"g.conv.weight", "g.conv.bias"} | out
    assert keys(mode="gaussian", sub_sample=True) == {"g.0.conv.weight", "g.0.conv.bias"} | out
    assert keys(mode="concatenation") == proj | out | {"concat_project.conv.weight"}
    assert keys(sub_sample=True) == {k.replace("g.conv", "g.0.conv").replace("phi.conv", "phi.0.conv")
                                     for k in proj} | out


def test_non_local_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        NonLocal2d(4, mode="cosine")
    with pytest.raises(ValueError, match="reduction"):
        NonLocal2d(4, reduction=0)


def test_non_local_gradients() -> None:
    block = randomize_weights_(NonLocal2d(C, mode="concatenation", sub_sample=True, norm_cfg=dict(type="BN")), 7)
    block.train()
    block(make_input(8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


# ---- DisentangledNonLocal2d ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_disentangled_matches_naive(mode: str) -> None:
    block = randomize_weights_(DisentangledNonLocal2d(C, mode=mode, temperature=0.5, norm_cfg=dict(type="BN")), 9)
    x = make_input(10)
    with torch.no_grad():
        got = block(x)
    expected = run_naive(naive_non_local, block, x, disentangled=True)
    assert (got - x).abs().max() > 0.1
    assert torch.allclose(got, expected, atol=1e-5)


def test_disentangled_is_a_non_local_with_conv_mask() -> None:
    block = DisentangledNonLocal2d(4, norm_cfg=dict(type="BN"))
    assert isinstance(block, NonLocal2d) and block.temperature == 0.05
    assert set(block.state_dict()) == set(NonLocal2d(4, norm_cfg=dict(type="BN")).state_dict()) | {
        "conv_mask.weight", "conv_mask.bias"}
    with pytest.raises(ValueError, match="sub_sample"):
        DisentangledNonLocal2d(4, sub_sample=True)


def test_disentangled_default_temperature_sharpens() -> None:
    sharp = randomize_weights_(DisentangledNonLocal2d(C), seed=11)
    x = make_input(12)
    with torch.no_grad():
        query, key = sharp.embed(x)
        weights = sharp.pairwise(query - query.mean(1, keepdim=True), key - key.mean(2, keepdim=True))
        expected = run_naive(naive_non_local, sharp, x, disentangled=True)
        assert torch.allclose(sharp(x), expected, atol=1e-4)
    assert torch.allclose(weights.sum(-1), torch.ones(2, H * W))
    assert weights.amax(-1).mean() > 0.5  # temperature 0.05 makes the softmax peaked


# ---- ContextBlock ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling_type", ["att", "avg"])
@pytest.mark.parametrize("fusion_types", [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")])
def test_context_block_matches_naive(pooling_type: str, fusion_types: tuple[str, ...]) -> None:
    block = randomize_weights_(ContextBlock(C, 0.5, pooling_type, fusion_types), seed=13)
    x = make_input(14)
    with torch.no_grad():
        got = block(x)
    assert (got - x).abs().max() > 0.1
    assert torch.allclose(got, run_naive(naive_context_block, block, x), atol=1e-5)


def test_context_block_keys_and_identity_at_init() -> None:
    block = ContextBlock(8, 1 / 4)
    assert block.planes == 2
    assert set(block.state_dict()) == {"conv_mask.weight", "conv_mask.bias"} | {
        f"channel_add_conv.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
    assert block.channel_mul_conv is None
    both = ContextBlock(8, 1 / 4, "avg", ("channel_mul", "channel_add"))
    assert not any(k.startswith("conv_mask") for k in both.state_dict())
    assert both.channel_add_conv[1].normalized_shape == (2, 1, 1)
    x = torch.randn(2, 8, 3, 5)
    assert torch.equal(block(x), x)
    assert torch.allclose(ContextBlock(8, 1 / 4, fusion_types=("channel_mul",))(x), x * 0.5)


def test_context_block_bad_arguments() -> None:
    with pytest.raises(ValueError, match="pooling_type"):
        ContextBlock(8, 0.25, pooling_type="max")
    with pytest.raises(ValueError, match="fusion_types"):
        ContextBlock(8, 0.25, fusion_types=())
    with pytest.raises(ValueError, match="fusion_types"):
        ContextBlock(8, 0.25, fusion_types=("channel_cat",))
    with pytest.raises(ValueError, match="fusion_types"):
        ContextBlock(8, 0.25, fusion_types="channel_add")
    with pytest.raises(ValueError, match="ratio"):
        ContextBlock(8, 0.1)


# ---- heads -----------------------------------------------------------------------------------------------

HEAD_CASES = {
    "nl": (dict(type="NLHead", reduction=2, use_scale=True, mode="embedded_gaussian"), "nl_block"),
    "nl_dot_product": (dict(type="NLHead", mode="dot_product", concat_input=False), "nl_block"),
    "dnl": (dict(type="DNLHead", reduction=2, use_scale=True, mode="embedded_gaussian"), "dnl_block"),
    "gc": (dict(type="GCHead", ratio=1 / 4, pooling_type="att", fusion_types=("channel_add",)), "gc_block"),
    "gc_avg_mul": (dict(type="GCHead", pooling_type="avg", fusion_types=("channel_mul",)), "gc_block"),
}


def head_cfg(extra: dict) -> dict:
    return dict(in_channels=12, in_index=1, channels=8, num_classes=4, norm_cfg=dict(type="BN")) | extra


@pytest.mark.parametrize("name", list(HEAD_CASES))
def test_head_shapes_gradients_and_keys(name: str) -> None:
    extra, block_name = HEAD_CASES[name]
    head = build("head", head_cfg(extra))
    assert head.num_convs == 2 and len(head.convs) == 2
    keys = set(head.state_dict())
    assert any(k.startswith(f"{block_name}.") for k in keys)
    assert ("conv_cat.conv.weight" in keys) == extra.get("concat_input", True)
    feats = [torch.randn(2, 4, 9, 11), torch.randn(2, 12, 5, 7)]
    randomize_weights_(head, seed=15).train()
    out = head(feats)
    assert out.shape == (2, 4, 5, 7)
    out.square().mean().backward()
    assert [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    losses = head.loss(feats, torch.randint(0, 4, (2, 17, 23)))
    assert set(losses) == {"loss_ce", "acc_seg"}


def test_head_block_sits_between_the_convs() -> None:
    head = build("head", head_cfg(dict(type="GCHead", pooling_type="avg", concat_input=False))).eval()
    randomize_weights_(head, seed=16)
    feats = [torch.randn(2, 4, 9, 11), torch.randn(2, 12, 5, 7)]
    with torch.no_grad():
        expected = head.convs[1](head.gc_block(head.convs[0](feats[1])))
        assert torch.allclose(head.forward_features(feats), expected)


def test_head_block_arguments_reach_the_block() -> None:
    nl = build("head", head_cfg(dict(type="NLHead", reduction=4, use_scale=False, mode="gaussian")))
    assert (nl.nl_block.inter_channels, nl.nl_block.use_scale, nl.nl_block.mode) == (2, False, "gaussian")
    assert nl.nl_block.conv_out.norm is not None
    dnl = build("head", head_cfg(dict(type="DNLHead", temperature=0.2, mode="dot_product")))
    assert (dnl.dnl_block.temperature, dnl.dnl_block.mode) == (0.2, "dot_product")
    gc = build("head", head_cfg(dict(type="GCHead", ratio=1 / 2, fusion_types=("channel_add", "channel_mul"))))
    assert gc.gc_block.planes == 4 and gc.gc_block.channel_mul_conv is not None
    with pytest.raises(TypeError):
        build("head", head_cfg(dict(type="NLHead", num_convs=1)))
