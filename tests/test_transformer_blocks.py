"""Transformer blocks (semseg.nn.transformer) against naive references written here: padding, patch embedding,
multi-head attention (vs softmax(QK^T / sqrt(d)) V and vs torch.nn.MultiheadAttention), FFN, drop path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.nn.transformer import (
    FFN,
    DropPath,
    MultiheadAttention,
    PatchEmbed,
    ScaledDotProductAttention,
    adaptive_pad,
    drop_path,
)

# F.scaled_dot_product_attention vs the plain formula in float32 (measured: ~5e-7 at these sizes).
SDPA_TOL = 1e-5


def naive_attention(attn: ScaledDotProductAttention, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V per head, one head at a time; (B, L, C) -> (B, Lq, C)."""
    c, heads = attn.embed_dims, attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    b = torch.zeros(3 * c) if b is None else b
    q = q_in @ w[:c].T + b[:c]
    k = k_in @ w[c:2 * c].T + b[c:2 * c]
    v = v_in @ w[2 * c:].T + b[2 * c:]
    d = c // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
        if mask is not None:
            logits = logits + mask
        outs.append(logits.softmax(-1) @ v[..., sl])
    return attn.out_proj(torch.cat(outs, dim=-1))


@pytest.mark.parametrize(("mode", "size", "expected"), [
    ("corner", (13, 17), (16, 20)), ("same", (13, 17), (16, 20)), ("corner", (16, 8), (16, 8))])
def test_adaptive_pad_shapes(mode: str, size: tuple[int, int], expected: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    out = adaptive_pad(x, 4, 4, mode=mode)
    assert tuple(out.shape[2:]) == expected
    top, left = ((expected[0] - size[0]) // 2, (expected[1] - size[1]) // 2) if mode == "same" else (0, 0)
    assert torch.equal(out[:, :, top:top + size[0], left:left + size[1]], x)
    assert torch.count_nonzero(out) == torch.count_nonzero(x)  # the rest is zeros


def test_adaptive_pad_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="padding mode"):
        adaptive_pad(torch.zeros(1, 1, 5, 5), 2, 2, mode="reflect")
    with pytest.raises(ValueError, match="padding"):
        PatchEmbed(3, 8, 4, padding="valid")


@pytest.mark.parametrize("padding", ["corner", "same", 1])
def test_patch_embed_is_a_conv_over_padded_patches(padding: str | int) -> None:
    torch.manual_seed(0)
    embed = PatchEmbed(3, 8, kernel_size=4, padding=padding, norm_cfg=dict(type="LN"))
    x = torch.randn(2, 3, 13, 17)
    tokens, hw = embed(x)
    if isinstance(padding, str):
        padded = adaptive_pad(x, 4, 4, mode=padding)
        ref = F.conv2d(padded, embed.projection.weight, embed.projection.bias, stride=4)
    else:
        ref = F.conv2d(x, embed.projection.weight, embed.projection.bias, stride=4, padding=padding)
    assert hw == tuple(ref.shape[2:])
    assert tokens.shape == (2, hw[0] * hw[1], 8)
    ref = F.layer_norm(ref.flatten(2).transpose(1, 2), (8,), embed.norm.weight, embed.norm.bias)
    assert torch.allclose(tokens, ref, atol=1e-6)


def test_patch_embed_keys() -> None:
    assert set(PatchEmbed(3, 8, 4, bias=False).state_dict()) == {"projection.weight"}
    assert set(PatchEmbed(3, 8, 4, norm_cfg=dict(type="LN")).state_dict()) == {
        "projection.weight", "projection.bias", "norm.weight", "norm.bias"}


@pytest.mark.parametrize("bias", [True, False])
def test_attention_matches_the_plain_formula(bias: bool) -> None:
    torch.manual_seed(0)
    attn = ScaledDotProductAttention(16, 4, bias=bias).eval()
    if bias:
        nn.init.normal_(attn.in_proj_bias)
        nn.init.normal_(attn.out_proj.bias)
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        assert (attn(x) - naive_attention(attn, x, x, x)).abs().max() < SDPA_TOL


def test_cross_attention_and_additive_mask_match_the_plain_formula() -> None:
    torch.manual_seed(0)
    attn = ScaledDotProductAttention(12, 3).eval()
    nn.init.normal_(attn.in_proj_bias)
    q, k, v = torch.randn(2, 5, 12), torch.randn(2, 7, 12), torch.randn(2, 7, 12)
    mask = torch.randn(5, 7)
    with torch.no_grad():
        assert (attn(q, k, v) - naive_attention(attn, q, k, v)).abs().max() < SDPA_TOL
        assert (attn(q, k, k, attn_mask=mask) - naive_attention(attn, q, k, k, mask)).abs().max() < SDPA_TOL
        assert (attn(q, k) - naive_attention(attn, q, k, k)).abs().max() < SDPA_TOL


def test_attention_matches_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    ours = ScaledDotProductAttention(16, 2).eval()
    nn.init.normal_(ours.in_proj_bias)
    torch_mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    assert set(torch_mha.state_dict()) == set(ours.state_dict())
    torch_mha.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert (ours(x) - torch_mha(x, x, x, need_weights=False)[0]).abs().max() < SDPA_TOL


def test_attention_keys_and_errors() -> None:
    assert set(MultiheadAttention(8, 2).state_dict()) == {
        "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias"}
    assert set(MultiheadAttention(8, 2, bias=False).state_dict()) == {"attn.in_proj_weight", "attn.out_proj.weight"}
    with pytest.raises(ValueError, match="divisible"):
        ScaledDotProductAttention(10, 3)


def test_multihead_attention_adds_the_identity() -> None:
    torch.manual_seed(0)
    block = MultiheadAttention(8, 2).eval()
    x, identity = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.attn(x))
        assert torch.allclose(block(x, identity=identity), identity + block.attn(x))


@pytest.mark.parametrize("num_fcs", [2, 3])
def test_ffn_keys_and_output(num_fcs: int) -> None:
    torch.manual_seed(0)
    ffn = FFN(8, 24, num_fcs=num_fcs, act_cfg=dict(type="GELU")).eval()
    expected = {f"layers.{i}.0.{p}" for i in range(num_fcs - 1) for p in ("weight", "bias")}
    expected |= {f"layers.{num_fcs - 1}.weight", f"layers.{num_fcs - 1}.bias"}
    assert set(ffn.state_dict()) == expected
    x = torch.randn(2, 5, 8)
    h = x
    for i in range(num_fcs - 1):
        h = F.gelu(ffn.layers[i][0](h))
    ref = ffn.layers[num_fcs - 1](h)
    with torch.no_grad():
        assert torch.allclose(ffn(x), x + ref, atol=1e-6)
        ffn.add_identity = False
        assert torch.allclose(ffn(x), ref, atol=1e-6)
    with pytest.raises(ValueError, match="num_fcs"):
        FFN(8, 24, num_fcs=1)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training() -> None:
    x = torch.randn(64, 5, 7) + 3
    layer = DropPath(0.25)
    assert torch.equal(layer.eval()(x), x)
    torch.manual_seed(0)
    out = layer.train()(x)
    per_sample = out / x  # 0 or 1 / 0.75 for every element of a sample
    kept = per_sample.flatten(1)
    assert torch.allclose(kept, kept[:, :1].expand_as(kept))
    assert all(torch.isclose(v, torch.tensor(0.0)) or torch.isclose(v, torch.tensor(1 / 0.75)) for v in kept[:, 0])
    assert 0 < (kept[:, 0] == 0).sum() < 64
    assert torch.equal(drop_path(x, 0.0, training=True), x)
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


def test_ffn_drop_path_applies_to_the_branch_only() -> None:
    ffn = FFN(4, 8, drop_path=0.5).train()
    assert isinstance(ffn.drop_path, DropPath)
    assert isinstance(FFN(4, 8).drop_path, nn.Identity)
    x = torch.randn(32, 3, 4)
    torch.manual_seed(1)
    out = ffn(x)
    dropped = (out == x).flatten(1).all(1)  # a dropped sample is its identity
    assert 0 < dropped.sum() < 32
