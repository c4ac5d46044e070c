"""oneDNN inference (semseg.nn.onednn): prepacked convolutions equal nn.Conv2d; a ResNet backbone kept in the
blocked layout gives the eager features; a whole segmentor's logits stay within 1e-5."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.nn.onednn import OneDNNConv2d, prepack_convolutions, to_onednn

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=2, dilation=2, bias=False),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=3, padding=1, groups=4),
    dict(kernel_size=(3, 5), padding=(1, 2), stride=(2, 1)),
])
def test_prepacked_convolution_equals_conv2d(kwargs) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, **kwargs).eval()
    packed = OneDNNConv2d.from_conv(conv)
    x = torch.randn(2, 8, 13, 17)
    with torch.no_grad():
        expected = conv(x)
        assert torch.allclose(packed(x), expected, atol=1e-5)
        assert torch.allclose(packed(x.to_mkldnn()).to_dense(), expected, atol=1e-5)
    assert packed.weight is conv.weight and set(packed.state_dict()) == set(conv.state_dict())


def test_with_autograd_it_is_a_plain_convolution() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    packed = OneDNNConv2d.from_conv(conv)
    packed(torch.randn(1, 3, 8, 8)).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def segmentor() -> nn.Module:
    torch.manual_seed(0)
    model = build("segmentor", dict(
        type="EncoderDecoder",
        backbone=dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8, out_indices=(2, 3),
                      strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), norm_cfg=dict(type="BN")),
        decode_head=dict(type="PSPHead", in_channels=64, in_index=1, channels=16, num_classes=5,
                         norm_cfg=dict(type="BN"), dropout_ratio=0.0)))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_segmentor_logits_and_state_dict_unchanged() -> None:
    model = segmentor()
    fast = to_onednn(copy.deepcopy(model))
    assert all(type(m) is not nn.Conv2d for m in fast.modules())
    x = torch.randn(2, 3, 61, 77)
    with torch.no_grad():
        features, fast_features = model.backbone(x), fast.backbone(x)
        assert all(not f.is_mkldnn for f in fast_features)  # the heads get dense features
        for ours, eager in zip(fast_features, features, strict=True):
            assert torch.allclose(ours, eager, atol=1e-5)
        logits = model.inference(x)
        assert (fast.inference(x) - logits).abs().max() < 1e-5 * max(1.0, logits.abs().max().item())
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_refuses_what_onednn_cannot_run() -> None:
    with pytest.raises(ValueError, match="CPU in float32"):
        to_onednn(segmentor().to(torch.float64))
    assert prepack_convolutions(nn.Sequential(nn.Conv2d(2, 2, 3, padding="same"), nn.Conv2d(2, 2, 1))) == 1


def test_init_model_and_the_command_line_option(tmp_path) -> None:
    import semseg
    from semseg.cli import build_parser

    config = "fcn_r18-d8_1xb8-600_synthetic-96x96"
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random"):
        exact = semseg.init_model(config, checkpoint=None)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": exact.state_dict()}, path)
    fast = semseg.init_model(config, checkpoint=path, onednn=True)
    exact = semseg.init_model(config, checkpoint=path)
    assert any(isinstance(m, OneDNNConv2d) for m in fast.modules())
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert (fast.inference(x) - exact.inference(x)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="CPU float32 option"):
        semseg.init_model(config, checkpoint=path, onednn=True, precision="bf16")
    for command in (["predict", config, "c.pth", "x.png"], ["test", config, "c.pth"], ["benchmark", config]):
        assert build_parser().parse_args([*command, "--onednn"]).onednn
