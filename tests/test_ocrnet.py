"""OCRHead: spatial gather and object attention against naive references, shapes, argument errors, and a
tiny OCRNet cascade (keys, inference, losses, gradients)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from semseg.build import build
from semseg.config import load_config
from semseg.models.heads.ocr import ObjectAttentionBlock, OCRHead, spatial_gather

NUM_CLASSES = 5
CONFIGS = Path(__file__).resolve().parents[1] / "semseg" / "configs" / "ocrnet"


def naive_gather(feats: torch.Tensor, logits: torch.Tensor, scale: float) -> torch.Tensor:
    """One region and one pixel at a time: region k = sum_p softmax_p(scale * logits[k]) * feats[:, p]."""
    n, c, h, w = feats.shape
    out = torch.zeros(n, c, logits.shape[1], 1, dtype=torch.float64)
    for b in range(n):
        for k in range(logits.shape[1]):
            scores = [scale * float(logits[b, k, i, j]) for i in range(h) for j in range(w)]
            top = max(scores)
            total = sum(math.exp(s - top) for s in scores)
            for p, s in enumerate(scores):
                out[b, :, k, 0] += math.exp(s - top) / total * feats[b, :, p // w, p % w].double()
    return out.float()


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_spatial_gather_matches_a_naive_reference(scale: float) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 5, 7, generator=gen)
    logits = 4 * torch.randn(2, 4, 5, 7, generator=gen)
    got = spatial_gather(feats, logits, scale)
    assert got.shape == (2, 3, 4, 1) and got.is_contiguous()
    torch.testing.assert_close(got, naive_gather(feats, logits, scale), atol=1e-5, rtol=1e-5)


def test_spatial_gather_needs_logits_at_the_features_size() -> None:
    with pytest.raises(ValueError, match="spatial size"):
        spatial_gather(torch.randn(2, 3, 5, 7), torch.randn(2, 4, 5, 8))
    with pytest.raises(ValueError, match="batch"):
        spatial_gather(torch.randn(2, 3, 5, 7), torch.randn(1, 4, 5, 7))


def test_object_attention_matches_a_naive_reference() -> None:
    torch.manual_seed(0)
    block = ObjectAttentionBlock(6, 4, None, dict(type="BN"), dict(type="ReLU")).eval()
    pixels, regions = torch.randn(2, 6, 5, 7), torch.randn(2, 6, 3, 1)
    with torch.no_grad():
        query = block.query_project(pixels).flatten(2)  # (N, 4, 35)
        key = block.key_project(regions).flatten(2)  # (N, 4, 3)
        value = block.value_project(regions).flatten(2)  # (N, 4, 3)
        context = torch.zeros(2, 4, 35)
        for b in range(2):
            for p in range(35):
                weights = torch.softmax(query[b, :, p] @ key[b] / 2.0, dim=0)  # scale 4**-0.5
                context[b, :, p] = value[b] @ weights
        context = block.out_project(context.view(2, 4, 5, 7))
        expected = block.bottleneck(torch.cat([context, pixels], dim=1))
        torch.testing.assert_close(block(pixels, regions), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(block.key_project, torch.nn.Sequential) and len(block.key_project) == 2
    assert not isinstance(block.value_project, torch.nn.Sequential)


def ocr(**kwargs) -> dict:
    return dict(type="OCRHead", in_channels=12, in_index=1, channels=8, ocr_channels=4,
                num_classes=NUM_CLASSES, norm_cfg=dict(type="BN"), dropout_ratio=0.1) | kwargs


def test_head_keys_and_shapes() -> None:
    head = build("head", ocr())
    assert isinstance(head, OCRHead) and head.ocr_channels == 4 and head.scale == 1
    keys = set(head.state_dict())
    for key in ("bottleneck.conv.weight", "object_context_block.key_project.1.bn.running_var",
                "object_context_block.query_project.0.conv.weight",
                "object_context_block.value_project.bn.weight",
                "object_context_block.out_project.conv.weight", "object_context_block.bottleneck.conv.weight",
                "conv_seg.weight"):
        assert key in keys
    assert head.bottleneck.conv.weight.shape == (8, 12, 3, 3)
    assert head.object_context_block.bottleneck.conv.weight.shape == (8, 16, 1, 1)
    feats = [torch.randn(2, 6, 13, 17), torch.randn(2, 12, 13, 17)]
    prev = torch.randn(2, 3, 13, 17)  # any number of regions works
    for mode in (head.train, head.eval):
        mode()
        assert head(feats, prev).shape == (2, NUM_CLASSES, 13, 17)


def test_head_with_resized_concatenated_inputs() -> None:
    head = build("head", ocr(in_channels=[4, 6], in_index=(0, 1), input_transform="resize_concat")).eval()
    feats = [torch.randn(2, 4, 13, 17), torch.randn(2, 6, 7, 9)]
    assert head(feats, torch.randn(2, NUM_CLASSES, 13, 17)).shape == (2, NUM_CLASSES, 13, 17)
    with pytest.raises(ValueError, match="spatial size"):
        head(feats, torch.randn(2, NUM_CLASSES, 7, 9))


def test_scale_above_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="scale <= 1"):
        build("head", ocr(scale=2))


def test_head_loss_uses_the_previous_logits() -> None:
    torch.manual_seed(0)
    head = build("head", ocr(dropout_ratio=0.0))
    feats = [torch.randn(2, 6, 13, 17), torch.randn(2, 12, 13, 17)]
    prev = torch.randn(2, NUM_CLASSES, 13, 17, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (2, 51, 67))
    losses = head.loss(feats, labels, prev)
    assert set(losses) == {"loss_ce", "acc_seg"}
    losses["loss_ce"].backward()
    assert prev.grad is not None and prev.grad.abs().max() > 0


BACKBONE = dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8, out_indices=(2, 3),
                strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))


def tiny_ocrnet(align_corners: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    fcn = dict(type="FCNHead", in_channels=32, in_index=0, channels=8, num_convs=1, concat_input=False,
               num_classes=NUM_CLASSES, norm_cfg=dict(type="BN"), align_corners=align_corners,
               loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4))
    head = ocr(in_channels=64, align_corners=align_corners)
    return build("segmentor", dict(type="CascadeEncoderDecoder", num_stages=2, backbone=BACKBONE,
                                   decode_head=[fcn, head], test_cfg=dict(mode="whole")))


@pytest.mark.filterwarnings("ignore:.*align_corners")  # odd sizes on purpose
@pytest.mark.parametrize("align_corners", [False, True])
def test_tiny_ocrnet_infers_and_trains(align_corners: bool) -> None:
    model = tiny_ocrnet(align_corners).eval()
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("decode_head.")} == {"0", "1"}
    assert isinstance(model.decode_head[1], OCRHead)
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        assert model.inference(x).shape == (2, NUM_CLASSES, 37, 45)
    model.train()
    labels = torch.randint(0, NUM_CLASSES, (2, 37, 45))
    losses = model.loss(x, labels)
    assert set(losses) == {f"decode_{i}.{k}" for i in (0, 1) for k in ("loss_ce", "acc_seg")}
    sum(v for k, v in losses.items() if "loss" in k).backward()
    head = model.decode_head[1]
    assert head.object_context_block.key_project[0].conv.weight.grad.abs().max() > 0


@pytest.mark.parametrize("name", ["ocrnet_hr18s_4xb2-40k_cityscapes-512x1024",
                                  "ocrnet_r101-d8_4xb2-40k_cityscapes-512x1024"])
def test_zoo_configs_build_ocrnet_cascades(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.py").model.to_dict()
    with torch.device("meta"):
        model = build("segmentor", cfg)
    assert [type(h).__name__ for h in model.decode_head] == ["FCNHead", "OCRHead"]
    head = model.decode_head[1]
    assert (head.channels, head.ocr_channels, head.scale, head.align_corners) == (512, 256, 1, False)
    assert head.sampler is None
