"""PSA mask and criss-cross attention against naive per-pixel loops; PSAHead and CCHead shapes and checks."""

from __future__ import annotations

import pytest
import torch

from semseg.build import build
from semseg.nn.criss_cross import CrissCrossAttention
from semseg.nn.psa_mask import PSAMask, psa_mask

# ---------------------------------------------------------------------------------------------------------
# psa_mask
# ---------------------------------------------------------------------------------------------------------


def naive_psa_mask(x: torch.Tensor, psa_type: str, h_mask: int, w_mask: int) -> torch.Tensor:
    """The operator's definition, one (pixel, mask cell) pair at a time; differentiable through autograd."""
    n, _, h, w = x.shape
    out = x.new_zeros(n, h * w, h, w)
    for y in range(h):
        for z in range(w):
            for i in range(h_mask):
                for j in range(w_mask):
                    p, q = y + i - (h_mask - 1) // 2, z + j - (w_mask - 1) // 2
                    if not (0 <= p < h and 0 <= q < w):
                        continue
                    value = x[:, i * w_mask + j, y, z]
                    if psa_type == "collect":
                        out[:, p * w + q, y, z] = value
                    else:
                        out[:, y * w + z, p, q] = value
    return out


MASK_CASES = {  # (H, W, hm, wm)
    "odd_mask": (5, 7, 3, 5),
    "even_mask": (5, 6, 4, 2),
    "mask_larger_than_map": (4, 5, 9, 11),
    "mask_twice_the_map": (3, 4, 5, 7),  # 2 * size - 1: every position reaches the whole map
    "one_cell": (3, 4, 1, 1),
    "one_row_map": (1, 6, 3, 3),
}


@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_psa_mask_matches_naive_loop_with_gradient(case: str, psa_type: str) -> None:
    h, w, hm, wm = MASK_CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, hm * wm, h, w, generator=gen, dtype=torch.float64)
    upstream = torch.randn(2, h * w, h, w, generator=gen, dtype=torch.float64)

    x_ours = x.clone().requires_grad_()
    ours = psa_mask(x_ours, psa_type, (hm, wm))
    x_ref = x.clone().requires_grad_()
    ref = naive_psa_mask(x_ref, psa_type, hm, wm)
    assert ours.shape == (2, h * w, h, w)
    assert torch.equal(ours, ref)

    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert torch.equal(x_ours.grad, x_ref.grad)


def test_psa_mask_at_the_borders() -> None:
    """At the corner (0, 0) a 3x3 collect mask keeps only the cells that land on (0..1, 0..1)."""
    h, w = 4, 5
    x = torch.arange(1.0, 10.0).view(1, 9, 1, 1).expand(1, 9, h, w).contiguous()
    out = psa_mask(x, "collect", 3).view(1, h, w, h, w)
    corner = out[0, :, :, 0, 0]  # sources (p, q) of position (0, 0)
    expected = torch.zeros(h, w)
    expected[:2, :2] = torch.tensor([[5.0, 6.0], [8.0, 9.0]])  # cells (1,1), (1,2), (2,1), (2,2)
    assert torch.equal(corner, expected)
    far = out[0, :, :, h - 1, w - 1]
    assert torch.equal(far[h - 2:, w - 2:], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    assert far.count_nonzero() == 4


def test_psa_mask_collect_and_distribute_are_transposes() -> None:
    """collect's map, read as (source, target), is distribute's map read as (target, source)."""
    x = torch.randn(2, 15, 4, 6)
    n, hw = 2, 24
    collect = psa_mask(x, "collect", (3, 5)).view(n, hw, hw)
    distribute = psa_mask(x, "distribute", (3, 5)).view(n, hw, hw)
    assert torch.equal(collect, distribute.transpose(1, 2))


def test_psa_mask_module_and_errors() -> None:
    module = PSAMask("distribute", (3, 3))
    assert list(module.parameters()) == [] and "distribute" in repr(module)
    x = torch.randn(1, 9, 4, 4)
    assert torch.equal(module(x), psa_mask(x, "distribute", 3))
    with pytest.raises(ValueError, match="psa_type"):
        PSAMask("gather", 3)
    with pytest.raises(ValueError, match="psa_type"):
        psa_mask(x, "both", 3)
    with pytest.raises(ValueError, match="mask_size"):
        psa_mask(x, "collect", (3, 4))


# ---------------------------------------------------------------------------------------------------------
# CrissCrossAttention
# ---------------------------------------------------------------------------------------------------------


def naive_criss_cross(module: CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """Per pixel: softmax over the scores with its column (centre excluded) and its row, then mix values."""
    query, key, value = module.query_conv(x), module.key_conv(x), module.value_conv(x)
    _, _, h, w = x.shape
    out = torch.zeros_like(x)
    for y in range(h):
        for z in range(w):
            positions = [(k, z) for k in range(h) if k != y] + [(y, k) for k in range(w)]
            keys = torch.stack([key[:, :, p, q] for p, q in positions], dim=-1)  # (N, C', K)
            values = torch.stack([value[:, :, p, q] for p, q in positions], dim=-1)  # (N, C, K)
            weights = torch.softmax((query[:, :, y, z, None] * keys).sum(1), dim=-1)  # (N, K)
            out[:, :, y, z] = (values * weights[:, None]).sum(-1)
    return module.gamma.scale * out + x


@pytest.mark.parametrize("size", [(5, 7), (1, 4), (6, 1)])
def test_criss_cross_matches_naive_loop(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    module = CrissCrossAttention(16).double()
    with torch.no_grad():
        module.gamma.scale.fill_(0.7)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    got = module(x)
    expected = naive_criss_cross(module, x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_criss_cross_keys_and_fresh_identity() -> None:
    module = CrissCrossAttention(16)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {
        "query_conv.weight": (2, 16, 1, 1), "query_conv.bias": (2,), "key_conv.weight": (2, 16, 1, 1),
        "key_conv.bias": (2,), "value_conv.weight": (16, 16, 1, 1), "value_conv.bias": (16,),
        "gamma.scale": ()}
    x = torch.randn(2, 16, 3, 5)
    assert torch.equal(module(x), x)  # gamma starts at 0


# ---------------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------------


def head_cfg(type_name: str, **kwargs) -> dict:
    cfg = dict(type=type_name, in_channels=16, in_index=-1, channels=16, num_classes=5, norm_cfg=dict(type="BN"))
    cfg.update(kwargs)
    return cfg


HEAD_CASES = {
    "psa_bi": head_cfg("PSAHead", mask_size=(9, 9)),
    "psa_collect_no_shrink": head_cfg("PSAHead", mask_size=(5, 7), psa_type="collect", shrink_factor=1),
    "psa_distribute_big_mask": head_cfg("PSAHead", mask_size=(21, 25), psa_type="distribute",
                                        normalization_factor=None, psa_softmax=False),
    "psa_compact_collect": head_cfg("PSAHead", mask_size=(5, 6), psa_type="collect", compact=True),
    "psa_compact_bi": head_cfg("PSAHead", mask_size=(5, 6), compact=True),
    "cc": head_cfg("CCHead", recurrence=2),
    "cc_one_pass_no_concat": head_cfg("CCHead", recurrence=1, concat_input=False),
}


@pytest.mark.filterwarnings("ignore:.*align_corners")  # PSAHead shrinks 9x11 with align_corners=True
@pytest.mark.parametrize("name", list(HEAD_CASES))
def test_head_shapes_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    head = build("head", HEAD_CASES[name])
    if hasattr(head, "cca"):
        with torch.no_grad():
            head.cca.gamma.scale.fill_(0.5)  # at 0 the attention convs would get no gradient
    feats = [torch.randn(2, 16, 9, 11)]  # shrunk by 2 (both odd): 5 x 6
    out = head(feats)
    assert out.shape == (2, 5, 9, 11)
    out.square().mean().backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    labels = torch.randint(0, 5, (2, 17, 21))
    assert set(head.loss(feats, labels)) == {"loss_ce", "acc_seg"}


def test_psa_head_keys() -> None:
    bi = build("head", head_cfg("PSAHead", mask_size=(3, 3)))
    prefixes = {k.split(".")[0] for k in bi.state_dict()}
    assert prefixes == {"conv_seg", "reduce", "attention", "reduce_p", "attention_p", "proj", "bottleneck"}
    assert bi.attention[1].weight.shape == (9, 16, 1, 1) and bi.attention[1].bias is None
    assert bi.proj.conv.in_channels == 32 and bi.proj.conv.padding == (1, 1)
    single = build("head", head_cfg("PSAHead", mask_size=(3, 3), psa_type="distribute"))
    assert not any(k.startswith(("reduce_p", "attention_p")) for k in single.state_dict())
    assert single.psamask.psa_type == "distribute"


def test_psa_head_errors() -> None:
    with pytest.raises(ValueError, match="psa_type"):
        build("head", head_cfg("PSAHead", mask_size=(3, 3), psa_type="both"))
    compact = build("head", head_cfg("PSAHead", mask_size=(3, 3), compact=True))
    with pytest.raises(ValueError, match="compact"):
        compact([torch.randn(1, 16, 9, 11)])


def test_cc_head_fixes_num_convs() -> None:
    head = build("head", head_cfg("CCHead"))
    assert len(head.convs) == 2 and head.recurrence == 2
    with pytest.raises(TypeError, match="num_convs"):
        build("head", head_cfg("CCHead", num_convs=1))
