"""FLOP and parameter counts (semseg.flops) against values computed by hand, one multiply-add = one FLOP,
with the operator rules of mmengine's analysis (conv: N * prod(weight.shape) * Hout * Wout; BN in eval:
2 per element; ReLU, max pooling, additions: 0)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.build import build
from semseg.flops import Complexity, model_complexity
from semseg.models.backbones.resnet import ResNet, ResNetV1c
from semseg.models.heads.psp import PSPHead

N, H, W = 2, 13, 17
BN = dict(type="BN")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids waiting on busy cores (an OpenMP team is slower than one here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Lambda(nn.Module):
    """A module whose forward is ``fn`` (the counter sees the torch calls fn makes), with named children."""

    def __init__(self, fn, **children: nn.Module):
        super().__init__()
        self.fn = fn
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, *inputs):
        return self.fn(*inputs)


def params_of(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnet50_v1c_deep_stem():
    backbone = ResNetV1c(depth=50, norm_cfg=BN)  # stem: 3x3 convs 3->32 (stride 2), 32->32, 32->64
    stem = nn.Sequential(backbone.stem, backbone.maxpool)
    got = model_complexity(stem, torch.randn(N, 3, H, W))
    ho, wo = (H + 2 - 3) // 2 + 1, (W + 2 - 3) // 2 + 1  # 7 x 9 after the stride-2 conv, kept by the others
    expected = (
        N * 3 * 3 * 3 * 32 * ho * wo + 2 * N * 32 * ho * wo  # conv 3x3 3->32, BN (affine: 2 per element)
        + N * 3 * 3 * 32 * 32 * ho * wo + 2 * N * 32 * ho * wo  # conv 3x3 32->32, BN
        + N * 3 * 3 * 32 * 64 * ho * wo + 2 * N * 64 * ho * wo  # conv 3x3 32->64, BN; ReLUs, max pool: 0
    )
    assert got.flops == expected == 3_624_768
    assert got.by_module == {"0": expected, "1": 0}
    assert got.params == params_of(stem)


def test_resnet50_7x7_stem():
    backbone = ResNet(depth=50, norm_cfg=BN)
    stem = nn.Sequential(backbone.conv1, getattr(backbone, backbone.stem_norm_name), backbone.relu, backbone.maxpool)
    got = model_complexity(stem, torch.randn(N, 3, H, W))
    ho, wo = (H + 6 - 7) // 2 + 1, (W + 6 - 7) // 2 + 1  # 7 x 9
    conv, bn = N * 7 * 7 * 3 * 64 * ho * wo, 2 * N * 64 * ho * wo
    assert got.flops == conv + bn == 1_201_536
    assert got.by_module == {"0": conv, "1": bn, "2": 0, "3": 0}
    assert got.params == params_of(stem) == 7 * 7 * 3 * 64 + 2 * 64


def test_psp_head():
    c_in, c, k, h, w = 16, 8, 5, 7, 9
    head = PSPHead(in_channels=c_in, channels=c, num_classes=k, pool_scales=(1, 2, 3, 6), norm_cfg=BN)
    model = Lambda(lambda x: head([x]), head=head)
    got = model_complexity(model, torch.randn(N, c_in, h, w))
    pyramid = sum(
        N * c_in * h * w  # adaptive average pool: 1 per input element
        + N * c_in * c * s * s + 2 * N * c * s * s  # 1x1 conv at s x s, BN
        + 4 * N * c * h * w  # bilinear upsampling back to h x w: 4 per output element
        for s in (1, 2, 3, 6)
    )
    bottleneck = N * 3 * 3 * (c_in + 4 * c) * c * h * w + 2 * N * c * h * w  # 3x3 conv on the concat, BN
    conv_seg = N * c * k * h * w  # 1x1 classifier (bias not counted); dropout: 0
    assert got.flops == pyramid + bottleneck + conv_seg == 481_104
    assert got.by_module == {"head": got.flops}
    assert got.params == params_of(head)


def one_op(fn, *inputs) -> int:
    return model_complexity(Lambda(fn), *inputs).flops


def test_matrix_products():
    a, b = torch.randn(2, 5, 7), torch.randn(2, 7, 3)
    assert one_op(lambda x: F.linear(x, torch.randn(4, 7)), a) == 2 * 5 * 7 * 4
    assert one_op(lambda x: nn.Linear(7, 4)(x), a) == 2 * 5 * 7 * 4  # bias not counted
    assert one_op(lambda x: x @ b, a) == 2 * 5 * 7 * 3
    assert one_op(lambda x: torch.matmul(x, b[0]), a) == 2 * 5 * 7 * 3
    assert one_op(lambda x: x.matmul(torch.randn(7)), a) == 2 * 5 * 7  # a 1-D operand is a (7, 1) column
    assert one_op(lambda x: torch.bmm(x, b), a) == 2 * 5 * 7 * 3
    assert one_op(lambda x: torch.mm(x[0], b[0]), a) == 5 * 7 * 3
    assert one_op(lambda x: torch.addmm(torch.zeros(3), x[0], b[0]), a) == 5 * 7 * 3
    assert one_op(lambda x: torch.baddbmm(torch.zeros(3), x, b), a) == 0  # not an operator mmengine knows


def test_einsum():
    # mmengine's two batched-matmul patterns are exact, whatever the letters
    a, b = torch.randn(2, 5, 7), torch.randn(2, 5, 3)
    assert one_op(lambda x: torch.einsum("nct,ncp->ntp", x, b), a) == 2 * 5 * 7 * 3
    assert one_op(lambda x: torch.einsum("bij,bkj->bki", x, torch.randn(2, 4, 7)), a) == 2 * 5 * 7 * 4
    # any other equation: numpy's optimal-path FLOP count (2 per multiply-add), as printed to 4 significant
    # digits, halved: 2 * 37 * 41 * 43 = 130462 is read as 1.305e+05
    x, y = torch.randn(37, 41), torch.randn(41, 43)
    assert one_op(lambda p: torch.einsum("ij,jk->ik", p, y), x) == 130_500 // 2 != 37 * 41 * 43


def test_scaled_dot_product_attention_counts_its_two_matmuls():
    q, k, v = torch.randn(2, 10, 4), torch.randn(2, 12, 4), torch.randn(2, 12, 6)
    assert one_op(lambda x: F.scaled_dot_product_attention(x, k, v), q) == 2 * 10 * 4 * 12 + 2 * 10 * 12 * 6


def test_convolutions():
    x = torch.randn(N, 4, H, W)
    assert one_op(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2), x) == N * 6 * 2 * 3 * 3 * 7 * 9
    assert one_op(nn.Conv2d(4, 6, 3, padding=2, dilation=2), x) == N * 6 * 4 * 3 * 3 * H * W
    # transposed: prod(weight.shape) (in, out, k, k) per input position
    assert one_op(nn.ConvTranspose2d(4, 6, 2, stride=2), x) == N * 4 * 6 * 2 * 2 * H * W
    assert one_op(nn.Conv1d(4, 6, 3), x[..., 0]) == N * 6 * 4 * 3 * (H - 2)


def test_norms():
    x = torch.randn(N, 4, H, W)
    numel = x.numel()
    assert one_op(nn.BatchNorm2d(4), x) == 2 * numel  # eval mode, affine
    assert one_op(nn.BatchNorm2d(4, affine=False), x) == numel
    assert one_op(nn.BatchNorm2d(4, track_running_stats=False), x) == 5 * numel  # batch statistics
    assert one_op(nn.GroupNorm(2, 4), x) == 5 * numel
    assert one_op(nn.LayerNorm(W, elementwise_affine=False), x) == 4 * numel
    assert one_op(nn.InstanceNorm2d(4), x) == 4 * numel
    assert one_op(nn.InstanceNorm2d(4, affine=True), x) == 5 * numel


def test_resampling_and_pooling():
    x = torch.randn(N, 4, H, W)
    out = N * 4 * 20 * 30
    assert one_op(lambda t: F.interpolate(t, size=(20, 30), mode="bilinear", align_corners=False), x) == 4 * out
    assert one_op(lambda t: F.interpolate(t, size=(20, 30), mode="nearest"), x) == out
    assert one_op(nn.Upsample(scale_factor=2, mode="nearest"), x) == N * 4 * 2 * H * 2 * W
    assert one_op(lambda t: F.interpolate(t, size=(20, 30), mode="bicubic", align_corners=False), x) == 0
    assert one_op(lambda t: F.interpolate(t, size=(5, 6), mode="area"), x) == x.numel()  # an adaptive avg pool
    assert one_op(nn.AdaptiveAvgPool2d(3), x) == x.numel()
    grid = torch.rand(N, 5, 6, 2) * 2 - 1
    assert one_op(lambda t: F.grid_sample(t, grid, align_corners=False), x) == 4 * N * 4 * 5 * 6


def test_operators_mmengine_does_not_count():
    x = torch.randn(N, 4, H, W)
    assert one_op(lambda t: F.max_pool2d(t.relu() + t * 2, 3).softmax(1).sigmoid().mean(), x) == 0
    assert one_op(nn.AvgPool2d(2), x) == 0


SEGMENTOR = dict(
    type="EncoderDecoder",
    backbone=dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8, out_indices=(2, 3),
                  strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
    decode_head=dict(type="PSPHead", in_channels=64, in_index=1, channels=8, num_classes=3, norm_cfg=BN),
    auxiliary_head=dict(type="FCNHead", in_channels=32, in_index=0, channels=8, num_convs=1, num_classes=3),
)


def test_segmentor_counts_get_flops_path():
    """A segmentor counts as MMSegmentation's get_flops: backbone and decode head in eval mode, no auxiliary
    head (in neither count), no final resize to the input size."""
    torch.manual_seed(0)
    model = build("segmentor", SEGMENTOR)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(N, 3, 33, 41)
    got = model_complexity(model, x)

    assert model.training and model.backbone.training  # the training flags are restored
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN statistics untouched
    assert set(got.by_module) == {"backbone", "decode_head", "data_preprocessor"}
    assert got.flops == got.by_module["backbone"] + got.by_module["decode_head"] > 0
    assert got.params == params_of(model) - params_of(model.auxiliary_head)

    backbone = model_complexity(model.backbone, x)
    assert backbone.flops == got.by_module["backbone"]
    assert backbone.params == params_of(model.backbone)
    # encode_decode adds only the bilinear resize of the (N, 3, h, w) logits to 33 x 41: 4 per output element
    with_resize = model_complexity(Lambda(model.encode_decode, segmentor=model), x)
    assert with_resize.flops == got.flops + 4 * N * 3 * 33 * 41


def test_complexity_fields():
    c = Complexity(flops=3_500_000_000, params=12, by_module={"backbone": 3_000_000_000})
    assert c.gflops() == 3.5
    note = c.mac_convention_note()
    assert "multiply-add" in note and "\n" not in note


def test_training_flags_restored_module_by_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].eval()  # a frozen norm inside a training model stays frozen
    model_complexity(model, torch.randn(N, 3, H, W))
    assert model.training and model[0].training and not model[1].training


def test_meta_device_counts_the_same():
    torch.manual_seed(0)
    model = build("segmentor", SEGMENTOR)
    x = torch.randn(N, 3, 33, 41)
    assert model_complexity(copy.deepcopy(model).to("meta"), x.to("meta")) == model_complexity(model, x)
