"""FLOP and parameter counts (semseg.flops) against mmengine's analysis, the counter MMSegmentation's
get_flops uses: on our own models (same object, same inputs), and against get_flops' count of the oracle's
model built from the same config.

Models: zoo configs at reduced widths (ResNet stem 16, base 8 channels; head channels 16), batch 2, 45x61.
"""

from __future__ import annotations

import copy
from math import prod

import pytest
import torch
from oracle import build_oracle_model
from torch import nn

from semseg.build import build
from semseg.config import load_config
from semseg.flops import model_complexity

X_SHAPE = (2, 3, 45, 61)

# zoo name -> (ResNet depth to build, decode-head settings shrunk along with the widths)
MODELS = {
    "pspnet_r18-d8_4xb2-80k_cityscapes-512x1024": (18, {}),
    "fcn_r50-d8_4xb2-40k_cityscapes-512x1024": (50, {}),
    "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024": (18, dict(c1_in_channels=8, c1_channels=8)),
    "upernet_r50_4xb2-40k_cityscapes-512x1024": (18, {}),
    "ccnet_r50-d8_4xb2-40k_cityscapes-512x1024": (18, {}),
    "danet_r50-d8_4xb2-40k_cityscapes-512x1024": (18, dict(pam_channels=8)),
    "ann_r50-d8_4xb2-40k_cityscapes-512x1024": (18, dict(project_channels=8)),
    "nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024": (18, {}),
    "dnl_r50-d8_4xb2-40k_cityscapes-512x1024": (18, {}),
    "gcnet_r50-d8_4xb2-40k_cityscapes-512x1024": (18, {}),
    "psanet_r50-d8_4xb2-40k_cityscapes-769x769": (18, dict(mask_size=(11, 15))),
    "emanet_r50-d8_4xb2-80k_cityscapes-512x1024": (18, dict(ema_channels=16, num_bases=8)),
}
# Heads whose attention runs through F.scaled_dot_product_attention, which mmengine counts zero.
SDPA_HEADS = ("danet", "ann")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids waiting on busy cores (an OpenMP team is slower than one here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(name: str) -> dict:
    """The zoo config's model with a narrow ResNet (stem 16, base 8 channels: 1/8 of the widths, 1/32 for a
    ResNet-50 config built at depth 18), the heads' in_channels following, head channels 16."""
    depth, head_settings = MODELS[name]
    cfg = load_config(name).to_dict()["model"]
    divisor = 32 if cfg["backbone"]["depth"] >= 50 > depth else 8
    cfg["backbone"].update(depth=depth, stem_channels=16, base_channels=8)
    for key in ("decode_head", "auxiliary_head"):
        head = cfg[key]
        c = head["in_channels"]
        head["in_channels"] = [k // divisor for k in c] if isinstance(c, (list, tuple)) else c // divisor
        head["channels"] = 16
    cfg["decode_head"].update(head_settings)
    return cfg


class TensorForward(nn.Module):
    """What get_flops traces: ``model(inputs)`` in mmseg's ``mode='tensor'``, i.e. the decode head's logits."""

    def __init__(self, seg: nn.Module):
        super().__init__()
        self.seg = seg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg.decode(self.seg.extract_feat(x))


def sdpa_jit_handle(inputs: list, outputs: list) -> int:
    """aten::scaled_dot_product_attention as the two matmuls mmengine counts in MMSegmentation's attention
    blocks: (.., L, E) @ (.., E, S) and (.., L, S) @ (.., S, Ev)."""
    from mmengine.analysis.jit_handles import get_shape

    query, key, out = get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0])
    return prod(query) * key[-2] + prod(out) * key[-2]


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    name = request.param
    torch.manual_seed(0)
    cfg = small_config(name)
    model = build("segmentor", cfg)
    x = torch.randn(*X_SHAPE, generator=torch.Generator().manual_seed(0))
    return name, cfg, model, x, model_complexity(model, x)


def test_equals_mmengine_on_our_model(case):
    """mmengine's FlopAnalyzer on our model, the aux head deleted, tracing what get_flops traces.
    (get_model_complexity_info's 'flops' is ``FlopAnalyzer(model, inputs).total()`` and its 'params'
    ``parameter_count(model)['']``; they are called directly to trace once and read the per-module counts.)"""
    from mmengine.analysis import FlopAnalyzer, parameter_count

    name, _, model, x, ours = case
    reference = copy.deepcopy(model).eval()
    del reference.auxiliary_head  # as get_flops does
    analyzer = FlopAnalyzer(TensorForward(reference), (x,))
    analyzer.set_op_handle("aten::scaled_dot_product_attention", sdpa_jit_handle)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_operator = analyzer.by_operator()
    print(f"{name}: ours {ours.flops}, mmengine {analyzer.total()} {dict(by_operator)}, params {ours.params}")

    assert ours.flops == analyzer.total() > 0
    assert ours.by_module == {k: analyzer.by_module()[f"seg.{k}"] for k in ours.by_module}
    assert ours.params == parameter_count(reference)[""] < sum(p.numel() for p in model.parameters())
    # mmengine without the handle above counts the attention zero, and differs from us by exactly that
    assert (by_operator.get("scaled_dot_product_attention", 0) > 0) == name.startswith(SDPA_HEADS)


def test_get_model_complexity_info_on_our_model():
    """The call itself, once, on a model without attention."""
    from mmengine.analysis import get_model_complexity_info

    model = build("segmentor", small_config("pspnet_r18-d8_4xb2-80k_cityscapes-512x1024"))
    x = torch.randn(*X_SHAPE)
    ours = model_complexity(model, x)
    del model.auxiliary_head
    model.eval()  # as get_flops does; in training mode mmengine counts BatchNorm 5 per element, not 2
    info = get_model_complexity_info(TensorForward(model), inputs=(x,), show_table=False, show_arch=False)
    assert (ours.flops, ours.params) == (info["flops"], info["params"])


def test_equals_get_flops_on_the_oracle_model(case):
    """MMSegmentation's get_flops on its own model built from the same config: aux head set to None, eval,
    get_model_complexity_info(model, inputs=...) (here its two parts, as above). Two models differ by the
    operators their implementations run: DANet (MMSegmentation's DAHead.forward also classifies each
    attention branch, two 1x1 convs our forward never runs) and EMANet (einsum there, bmm here)."""
    from mmengine.analysis import FlopAnalyzer, parameter_count

    name, cfg, model, x, ours = case
    oracle = build_oracle_model(cfg, init_weights=False)
    oracle.auxiliary_head = None
    oracle.eval()
    analyzer = FlopAnalyzer(oracle, (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    flops = analyzer.total()
    print(f"{name}: ours {ours.flops}, get_flops on the oracle {flops} {dict(analyzer.by_operator())}")
    assert ours.params == parameter_count(oracle)[""]
    if name.startswith("danet"):
        n, _, h, w = model.extract_feat(x)[-1].shape
        head = model.decode_head
        assert flops - ours.flops == 2 * n * head.channels * head.num_classes * h * w  # pam/cam_cls_seg
    elif name.startswith("emanet"):
        # MMSegmentation's EMA module multiplies with einsum, whose count mmengine reads to 4 significant
        # digits; ours runs bmm, counted exactly
        assert 0 < abs(flops - ours.flops) <= 5e-4 * analyzer.by_operator()["einsum"]
    else:
        assert ours.flops == flops


@pytest.mark.parametrize(
    ("equation", "shapes"),
    [
        ("ncyx,nckx->nyxk", [(2, 3, 5, 7), (2, 3, 6, 7)]),  # criss-cross attention
        ("bij,bjk->bik", [(2, 37, 41), (2, 41, 43)]),  # rounded by mmengine
        ("nct,ncp->ntp", [(2, 5, 7), (2, 5, 3)]),  # exact special case
        ("i,j->ij", [(3,), (5,)]),
        ("ij,jk,kl->il", [(3, 4), (4, 5), (5, 6)]),
    ],
)
def test_einsum_equals_mmengine(equation, shapes):
    from mmengine.analysis import FlopAnalyzer

    first, *rest = (torch.randn(s) for s in shapes)

    class Einsum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum(equation, x, *rest)

    assert model_complexity(Einsum(), first).flops == FlopAnalyzer(Einsum(), (first,)).total()
