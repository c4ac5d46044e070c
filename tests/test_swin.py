"""SwinTransformer: window attention, shifted-window mask, patch merging against naive references written from
their definitions; shapes, strides, argument checks, frozen stages, gradient checkpointing."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from semseg.build import build
from semseg.models.backbones.swin import (
    PatchMerging,
    ShiftWindowMSA,
    WindowMSA,
    relative_position_index,
    shifted_window_mask,
)

SMALL = dict(type="SwinTransformer", embed_dims=16, depths=(2, 1, 2, 1), num_heads=(2, 2, 4, 4), window_size=4)


def _randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_relative_position_index_is_the_offset_row() -> None:
    wh, ww = 3, 4
    index = relative_position_index((wh, ww))
    for p, q in itertools.product(range(wh * ww), repeat=2):
        dy, dx = p // ww - q // ww, p % ww - q % ww
        assert index[p, q] == (dy + wh - 1) * (2 * ww - 1) + dx + ww - 1


def _naive_mask(hw: tuple[int, int], ws: int, shift: int) -> torch.Tensor:
    """In the rolled map, position i along an axis holds a wrapped-around token when i >= size - shift; two
    tokens of a window may attend to each other only when both or neither wrapped, along both axes."""
    h, w = hw
    windows = [(r, c) for r in range(h // ws) for c in range(w // ws)]
    mask = torch.zeros(len(windows), ws * ws, ws * ws)
    for k, (r, c) in enumerate(windows):
        for p, q in itertools.product(range(ws * ws), repeat=2):
            (y1, x1), (y2, x2) = (r * ws + p // ws, c * ws + p % ws), (r * ws + q // ws, c * ws + q % ws)
            same = (y1 >= h - shift) == (y2 >= h - shift) and (x1 >= w - shift) == (x2 >= w - shift)
            mask[k, p, q] = 0.0 if same else -100.0
    return mask


@pytest.mark.parametrize(("hw", "ws", "shift"), [((8, 12), 4, 2), ((7, 7), 7, 3), ((24, 12), 12, 6), ((6, 9), 3, 1)])
def test_shifted_window_mask_matches_definition(hw: tuple[int, int], ws: int, shift: int) -> None:
    assert torch.equal(shifted_window_mask(hw, ws, shift), _naive_mask(hw, ws, shift))


def _naive_window_attention(msa: WindowMSA, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T * scale + table[offset] + mask) v per window and head, with explicit loops and offsets."""
    b, nw, n, c = x.shape
    heads, d = msa.num_heads, c // msa.num_heads
    wh, ww = msa.window_size
    table = msa.relative_position_bias_table
    q, k, v = msa.qkv(x).split(c, dim=-1)
    out = torch.zeros(b, nw, n, c)
    for bi, wi, hi in itertools.product(range(b), range(nw), range(heads)):
        cols = slice(hi * d, (hi + 1) * d)
        logits = q[bi, wi, :, cols] @ k[bi, wi, :, cols].T * d**-0.5
        for p, r in itertools.product(range(n), repeat=2):
            row = (p // ww - r // ww + wh - 1) * (2 * ww - 1) + p % ww - r % ww + ww - 1
            logits[p, r] += table[row, hi] + (mask[wi, p, r] if mask is not None else 0.0)
        out[bi, wi, :, cols] = logits.softmax(-1) @ v[bi, wi, :, cols]
    return msa.proj(out)


@pytest.mark.parametrize("masked", [False, True])
def test_window_attention_matches_the_formula(masked: bool) -> None:
    torch.manual_seed(0)
    msa = WindowMSA(8, 2, (3, 3))
    _randomize_(msa)
    x = torch.randn(2, 4, 9, 8)
    mask = shifted_window_mask((6, 6), 3, 1) if masked else None
    with torch.no_grad():
        # F.scaled_dot_product_attention vs the explicit softmax: same numbers within 1e-5
        assert (msa(x, mask) - _naive_window_attention(msa, x, mask)).abs().max() < 1e-5


def _naive_shift_window_msa(module: ShiftWindowMSA, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Per token of the zero-padded map: its position in the map rolled up-left by the shift, the keys of the
    same window there, their relative offsets and the wrap-around mask, all spelled out."""
    msa, ws, s = module.w_msa, module.window_size, module.shift_size
    b, _, c = x.shape
    h, w = hw
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    grid = torch.zeros(b, hp, wp, c)
    grid[:, :h, :w] = x.reshape(b, h, w, c)
    heads, d = msa.num_heads, c // msa.num_heads
    q, k, v = msa.qkv(grid).split(c, dim=-1)
    out = torch.zeros(b, h, w, c)
    for y, x0 in itertools.product(range(h), range(w)):
        ry, rx = (y - s) % hp, (x0 - s) % wp  # rolled position
        keys = [((ry // ws) * ws + i, (rx // ws) * ws + j) for i in range(ws) for j in range(ws)]
        for hi in range(heads):
            cols = slice(hi * d, (hi + 1) * d)
            logits = []
            for ky, kx in keys:
                oy, ox = (ky + s) % hp, (kx + s) % wp  # where the key token sits in the padded map
                bias = msa.relative_position_bias_table[(ry - ky + ws - 1) * (2 * ws - 1) + rx - kx + ws - 1, hi]
                wrapped = (ry >= hp - s) != (ky >= hp - s) or (rx >= wp - s) != (kx >= wp - s)
                logits.append((q[:, y, x0, cols] * k[:, oy, ox, cols]).sum(-1) * d**-0.5 + bias
                              - (100.0 if s and wrapped else 0.0))
            attn = torch.stack(logits, -1).softmax(-1)  # (B, ws*ws)
            values = torch.stack([v[:, (ky + s) % hp, (kx + s) % wp, cols] for ky, kx in keys], 1)
            out[:, y, x0, cols] = (attn[:, :, None] * values).sum(1)
    return msa.proj(out.reshape(b, h * w, c))


@pytest.mark.parametrize(("shift", "hw"), [(0, (5, 7)), (1, (5, 7)), (2, (8, 4)), (1, (3, 2))])
def test_shift_window_msa_matches_the_definition(shift: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    module = ShiftWindowMSA(8, 2, window_size=4, shift_size=shift).eval()
    _randomize_(module)
    x = torch.randn(2, hw[0] * hw[1], 8)
    with torch.no_grad():
        assert (module(x, hw) - _naive_shift_window_msa(module, x, hw)).abs().max() < 1e-5


@pytest.mark.parametrize(("hw", "stride", "norm"), [((5, 7), 2, True), ((6, 4), 2, False), ((7, 9), 3, False)])
def test_patch_merging_order_and_padding(hw: tuple[int, int], stride: int, norm: bool) -> None:
    torch.manual_seed(0)
    merge = PatchMerging(3, 5, stride=stride, norm_cfg=dict(type="LN") if norm else None)
    _randomize_(merge)
    h, w = hw
    x = torch.randn(2, h * w, 3)
    with torch.no_grad():
        got, got_hw = merge(x, hw)
    oh, ow = -(-h // stride), -(-w // stride)  # every pixel covered
    assert got_hw == (oh, ow)
    grid = F.pad(x.reshape(2, h, w, 3), (0, 0, 0, max((ow - 1) * stride + 2 - w, 0),
                                         0, max((oh - 1) * stride + 2 - h, 0)))
    # channel-major: feature c * 4 + 2 * dy + dx
    feats = torch.stack([grid[:, y * stride + dy, x0 * stride + dx, c]
                         for y in range(oh) for x0 in range(ow)
                         for c in range(3) for dy in range(2) for dx in range(2)], -1).reshape(2, oh * ow, 12)
    with torch.no_grad():
        expected = merge.reduction(merge.norm(feats) if norm else feats)
    assert (got - expected).abs().max() < 1e-6


@pytest.mark.parametrize("window_size", [4, 7, 12])
def test_backbone_shapes_strides_and_channels(window_size: int) -> None:
    torch.manual_seed(0)
    model = build("backbone", dict(SMALL, window_size=window_size)).eval()
    assert model.out_channels == [16, 32, 64, 128] and model.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
        odd = model(torch.randn(2, 3, 61, 45))  # padded: ceil at every stage
    assert [tuple(o.shape) for o in outs] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    assert [tuple(o.shape[2:]) for o in odd] == [(16, 12), (8, 6), (4, 3), (2, 2)]


def test_out_indices_norms_and_keys() -> None:
    model = build("backbone", dict(SMALL, out_indices=(1, 3), patch_norm=False, qkv_bias=False))
    keys = set(model.state_dict())
    assert {"norm1.weight", "norm3.weight"} <= keys and "norm0.weight" not in keys
    assert "patch_embed.norm.weight" not in keys and "stages.0.downsample.norm.weight" not in keys
    assert "stages.0.blocks.0.attn.w_msa.qkv.bias" not in keys
    assert "stages.0.blocks.0.attn.w_msa.relative_position_index" in keys
    assert model.state_dict()["stages.1.downsample.reduction.weight"].shape == (64, 128)
    assert model.out_channels == [32, 128] and model.out_strides == [8, 32]
    with torch.no_grad():
        assert [o.shape[1] for o in model.eval()(torch.randn(1, 3, 32, 32))] == [32, 128]


def test_shifts_alternate_and_drop_path_rises() -> None:
    model = build("backbone", dict(SMALL, drop_path_rate=0.5))
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert [b.attn.shift_size for b in blocks] == [0, 2, 0, 0, 2, 0]
    rates = [getattr(b.ffn.drop_path, "drop_prob", 0.0) for b in blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])


def test_abs_pos_embed_needs_the_pretraining_grid() -> None:
    model = build("backbone", dict(SMALL, use_abs_pos_embed=True, pretrain_img_size=(32, 48))).eval()
    assert model.absolute_pos_embed.shape == (1, 8 * 12, 16)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 48))
        with pytest.raises(ValueError, match="absolute_pos_embed"):
            model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(("override", "error"), [
    (dict(strides=(2, 2, 2, 2)), "patch_size"),
    (dict(out_indices=(4,)), "out_indices"),
    (dict(frozen_stages=5), "frozen_stages"),
    (dict(num_heads=(2, 2)), "one entry per stage"),
    (dict(norm_cfg=dict(type="BN")), "LN"),
    (dict(num_heads=(3, 2, 4, 4)), "divisible"),
    (dict(pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth")), "either"),
])
def test_bad_arguments(override: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build("backbone", dict(SMALL, **override))


def test_pretrained_is_stored_not_loaded() -> None:
    model = build("backbone", dict(SMALL, pretrained="pretrain/swin.pth"))
    assert model.init_cfg == dict(type="Pretrained", checkpoint="pretrain/swin.pth")
    init_cfg = dict(type="Pretrained", checkpoint="https://example.org/swin.pth")
    assert build("backbone", dict(SMALL, init_cfg=init_cfg)).init_cfg == init_cfg


@pytest.mark.parametrize("frozen_stages", [-1, 0, 2, 4])
def test_frozen_stages(frozen_stages: int) -> None:
    model = build("backbone", dict(SMALL, frozen_stages=frozen_stages, use_abs_pos_embed=True,
                                   pretrain_img_size=32))
    model.train()
    frozen = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("stages") else "")
              for name, p in model.named_parameters() if not p.requires_grad}
    expected = set()
    if frozen_stages >= 0:
        expected |= {"patch_embed", "absolute_pos_embed"}
    for i in range(frozen_stages):
        expected |= {f"stages.{i}", f"norm{i}"}
    assert frozen == expected
    assert model.patch_embed.training == (frozen_stages < 0)
    assert all(model.stages[i].training == (i >= frozen_stages) for i in range(4))
    assert all(getattr(model, f"norm{i}").training == (i >= frozen_stages) for i in range(4))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = build("backbone", dict(SMALL, drop_path_rate=0.0))
    checkpointed = build("backbone", dict(SMALL, drop_path_rate=0.0, with_cp=True))
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 17, 21)
    grads = []
    for model in (plain, checkpointed):
        sum(o.square().sum() for o in model.train()(x)).backward()
        grads.append(model.stages[0].blocks[1].attn.w_msa.relative_position_bias_table.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_drop_path_is_random_in_training_only() -> None:
    torch.manual_seed(0)
    model = build("backbone", dict(SMALL, drop_path_rate=0.9))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert not torch.equal(model.train()(x)[-1], model(x)[-1])
        assert torch.equal(model.eval()(x)[-1], model(x)[-1])
