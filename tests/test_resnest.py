"""ResNeSt: split attention against a naive reference, shapes and strides, key names, options, errors."""

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.models.backbones.resnest import ResNeSt, SplitAttentionBottleneck, SplitAttentionConv2d
from semseg.models.backbones.resnet import ResNet

SMALL = dict(depth=50, stem_channels=16, base_channels=8)


def _x(h: int = 13, w: int = 17) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))


def _randomize_norms(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _naive_split_attention(block: SplitAttentionConv2d, x: torch.Tensor) -> torch.Tensor:
    """Per sample, group and split: the paper's cardinal groups written out with loops."""
    feats = block.relu(block.bn0(block.conv(x)))  # (N, radix * C, H, W), split r of group g at (r, g)
    n, rc, h, w = feats.shape
    radix, groups = block.radix, block.groups
    c = rc // radix
    cg = c // groups  # channels of one group within one split
    splits = [feats[:, r * c:(r + 1) * c] for r in range(radix)]
    pooled = sum(splits).mean(dim=(2, 3), keepdim=True)
    logits = block.fc2(block.relu(block.bn1(block.fc1(pooled))))[:, :, 0, 0]  # (N, radix * C)
    out = torch.zeros(n, c, h, w)
    for i in range(n):
        for g in range(groups):
            # fc2's outputs of group g hold radix consecutive chunks of cg channels
            chunk = logits[i, g * radix * cg:(g + 1) * radix * cg].view(radix, cg)
            weights = chunk.softmax(dim=0) if radix > 1 else torch.sigmoid(chunk)
            for r in range(radix):
                out[i, g * cg:(g + 1) * cg] += weights[r][:, None, None] * splits[r][i, g * cg:(g + 1) * cg]
    return out


@pytest.mark.parametrize("radix, groups, channels", [(2, 1, 12), (4, 2, 16), (1, 2, 12), (3, 2, 12)])
def test_split_attention_matches_naive_reference(radix: int, groups: int, channels: int) -> None:
    torch.manual_seed(0)
    block = SplitAttentionConv2d(channels, channels, 3, padding=1, groups=groups, radix=radix,
                                 reduction_factor=2).eval()
    _randomize_norms(block)
    x = torch.randn(2, channels, 7, 9)
    with torch.no_grad():
        got = block(x)
        expected = _naive_split_attention(block, x)
    assert got.shape == (2, channels, 7, 9)
    assert (got - expected).abs().max() < 1e-5


def test_split_attention_keys_and_gate_width() -> None:
    block = SplitAttentionConv2d(64, 64, 3, groups=2, radix=2, reduction_factor=4)
    assert set(dict(block.named_children())) == {"conv", "bn0", "relu", "fc1", "bn1", "fc2"}
    assert block.conv.out_channels == 128 and block.conv.groups == 4
    assert block.fc1.out_channels == 32 and block.fc1.groups == 2 and block.fc1.bias is not None
    narrow = SplitAttentionConv2d(16, 16, 3, radix=2, reduction_factor=4)
    assert narrow.fc1.out_channels == 32  # at least 32 hidden channels
    gn = SplitAttentionConv2d(16, 16, 3, norm_cfg=dict(type="GN", num_groups=4))
    assert {"gn0", "gn1"} <= set(dict(gn.named_children()))


@pytest.mark.parametrize("h, w", [(64, 64), (13, 17), (97, 131)])
def test_output_shapes_and_strides(h: int, w: int) -> None:
    model = ResNeSt(**SMALL).eval()
    with torch.no_grad():
        outs = model(_x(h, w))
    assert model.out_channels == [32, 64, 128, 256]
    assert model.out_strides == [4, 8, 16, 32]
    # every downsampling rounds up
    assert [tuple(o.shape) for o in outs] == [
        (2, c, -(-h // s), -(-w // s)) for c, s in zip(model.out_channels, model.out_strides, strict=True)]


def test_d8_config_and_out_indices() -> None:
    model = build("backbone", dict(type="ResNeSt", strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                                   contract_dilation=True, out_indices=(0, 3), **SMALL)).eval()
    with torch.no_grad():
        outs = model(_x(32, 40))
    assert model.out_strides == [4, 8] and model.out_channels == [32, 256]
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 10), (4, 5)]
    # contract_dilation halves the dilation of each dilated stage's first block
    assert model.layer4[0].conv2.conv.dilation == (2, 2) and model.layer4[1].conv2.conv.dilation == (4, 4)
    assert model.layer3[0].conv2.conv.dilation == (1, 1) and model.layer3[1].conv2.conv.dilation == (2, 2)


def test_key_names_of_the_zoo_layout() -> None:
    model = build("backbone", dict(type="ResNeSt", depth=101, stem_channels=128, radix=2, reduction_factor=4,
                                   avg_down_stride=True))
    keys = set(model.state_dict())
    assert {"stem.0.weight", "stem.6.weight", "stem.7.running_var", "layer1.0.conv1.weight",
            "layer1.0.bn1.weight", "layer1.0.conv2.conv.weight", "layer1.0.conv2.bn0.running_mean",
            "layer1.0.conv2.fc1.weight", "layer1.0.conv2.fc1.bias", "layer1.0.conv2.bn1.weight",
            "layer1.0.conv2.fc2.bias", "layer1.0.conv3.weight", "layer1.0.bn3.weight",
            "layer2.0.downsample.1.weight", "layer2.0.downsample.2.running_mean",
            "layer3.22.bn3.weight"} <= keys
    assert not any(".bn2." in k for k in keys)
    assert model.stem[0].out_channels == 64 and model.stem[6].out_channels == 128
    assert isinstance(model.layer2[0].downsample[0], nn.AvgPool2d)  # V1d shortcut
    # strided blocks pool after the attention, the others have no pool
    assert isinstance(model.layer2[0].avd_layer, nn.AvgPool2d) and model.layer2[0].conv2.conv.stride == (1, 1)
    assert not hasattr(model.layer2[1], "avd_layer") and not hasattr(model.layer1[0], "avd_layer")


def test_avg_down_stride_off_and_caffe_style_stride_the_convs() -> None:
    plain = ResNeSt(avg_down_stride=False, **SMALL)
    assert plain.layer2[0].conv2.conv.stride == (2, 2) and not hasattr(plain.layer2[0], "avd_layer")
    caffe = ResNeSt(style="caffe", **SMALL)
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.conv.stride == (1, 1)
    assert not hasattr(caffe.layer2[0], "avd_layer")
    with torch.no_grad():
        assert [o.shape for o in caffe.eval()(_x())] == [o.shape for o in plain.eval()(_x())]


def test_groups_set_the_middle_width() -> None:
    block = SplitAttentionBottleneck(64, 64, groups=4, base_width=8, base_channels=64)
    assert block.conv1.out_channels == 32 and block.conv2.conv.groups == 8  # floor(64 * 8 / 64) * 4
    assert ResNeSt(**SMALL).layer1[0].conv1.out_channels == 8  # groups=1: the planes


def test_zero_init_residual_leaves_the_blocks_alone() -> None:
    model = ResNeSt(zero_init_residual=True, **SMALL)
    assert all(m.bn3.weight.eq(1).all() for m in model.modules() if isinstance(m, SplitAttentionBottleneck))
    resnet = ResNet(depth=50, zero_init_residual=True)
    assert resnet.layer1[0].bn3.weight.eq(0).all()  # ResNet's own blocks still start as the identity


def test_frozen_stages_and_norm_eval() -> None:
    model = ResNeSt(frozen_stages=1, norm_eval=True, **SMALL)
    model.train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.layer2.training


def test_argument_errors() -> None:
    with pytest.raises(KeyError, match="invalid depth 18 for ResNeSt"):
        ResNeSt(depth=18)
    with pytest.raises(ValueError, match="radix"):
        ResNeSt(radix=0, **SMALL)
    with pytest.raises(ValueError, match="style"):
        SplitAttentionBottleneck(8, 4, style="tf")
    with pytest.raises(NotImplementedError, match="ResNeSt with dcn"):
        ResNeSt(dcn=dict(type="DCN"), **SMALL)
