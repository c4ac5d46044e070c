"""ResNet backbones: shapes, key names, dilation options, freezing, checkpointing."""

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.models.backbones.resnet import ResNet, ResNetV1c, ResNetV1d

D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))


def _x(h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def _batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("depth, channels", [(18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])])
def test_output_shapes_and_strides(depth: int, channels: list[int]) -> None:
    model = ResNet(depth=depth).eval()
    with torch.no_grad():
        outs = model(_x())
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(1, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)]
    assert model.out_channels == channels
    assert model.out_strides == [4, 8, 16, 32]


def test_out_indices_pick_stages() -> None:
    model = ResNet(depth=18, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(_x())
    assert [o.shape[1] for o in outs] == [128, 512] == model.out_channels
    assert model.out_strides == [8, 32]


def test_v1b_key_names() -> None:
    keys = set(ResNet(depth=50).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.running_var", "layer4.2.bn3.weight"} <= keys
    assert not any(k.startswith("stem.") for k in keys)


def test_v1c_deep_stem_key_names() -> None:
    model = build("backbone", dict(type="ResNetV1c", depth=18))
    keys = set(model.state_dict())
    assert {"stem.0.weight", "stem.1.running_mean", "stem.3.weight", "stem.4.weight", "stem.6.weight",
            "stem.7.running_var"} <= keys
    assert "conv1.weight" not in keys and "bn1.weight" not in keys
    assert [type(model.stem[i]) for i in (2, 5, 8)] == [nn.ReLU] * 3
    assert model.stem[0].out_channels == 32 and model.stem[6].out_channels == 64
    assert "layer2.0.downsample.0.weight" in keys  # V1c keeps the plain strided 1x1 shortcut


def test_v1d_avg_down_key_names() -> None:
    model = ResNetV1d(depth=50)
    keys = set(model.state_dict())
    assert {"stem.0.weight", "layer1.0.downsample.1.weight", "layer1.0.downsample.2.running_mean"} <= keys
    assert "layer1.0.downsample.0.weight" not in keys
    pool, conv = model.layer2[0].downsample[0], model.layer2[0].downsample[1]
    assert isinstance(pool, nn.AvgPool2d) and pool.stride == 2 and pool.ceil_mode
    assert conv.stride == (1, 1)
    with torch.no_grad():
        outs = model.eval()(_x(33, 47))
    assert [tuple(o.shape[2:]) for o in outs] == [(9, 12), (5, 6), (3, 3), (2, 2)]


def test_d8_output_stride() -> None:
    model = ResNetV1c(depth=18, contract_dilation=True, **D8).eval()
    with torch.no_grad():
        outs = model(_x())
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 16), (8, 8), (8, 8), (8, 8)]
    assert model.out_strides == [4, 8, 8, 8]


def test_contract_dilation_halves_first_block() -> None:
    contracted = ResNetV1c(depth=18, contract_dilation=True, **D8)
    plain = ResNetV1c(depth=18, **D8)
    # BasicBlock: dilation sits on conv1, with padding = dilation so the size is kept
    assert [b.conv1.dilation for b in contracted.layer3] == [(1, 1), (2, 2)]
    assert [b.conv1.dilation for b in contracted.layer4] == [(2, 2), (4, 4)]
    assert contracted.layer4[0].conv1.padding == (2, 2)
    assert [b.conv1.dilation for b in plain.layer4] == [(4, 4), (4, 4)]
    assert [b.conv1.dilation for b in plain.layer2] == [(1, 1), (1, 1)]


def test_multi_grid_sets_last_stage_dilations() -> None:
    model = ResNetV1c(depth=50, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), multi_grid=(1, 2, 4),
                      contract_dilation=True)
    # As in MMSegmentation, multi_grid gives the dilations outright (not times the stage's dilation 2)
    assert [b.conv2.dilation for b in model.layer4] == [(1, 1), (2, 2), (4, 4)]
    assert [b.conv2.padding for b in model.layer4] == [(1, 1), (2, 2), (4, 4)]
    assert all(b.conv2.dilation == (1, 1) for b in model.layer3)
    assert model.out_strides == [4, 8, 16, 16]
    with pytest.raises(ValueError, match="multi_grid"):
        ResNetV1c(depth=50, dilations=(1, 1, 1, 2), multi_grid=(1, 2))


def test_style_moves_the_stride() -> None:
    pytorch, caffe = ResNet(depth=50), ResNet(depth=50, style="caffe")
    assert (pytorch.layer2[0].conv1.stride, pytorch.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    assert (caffe.layer2[0].conv1.stride, caffe.layer2[0].conv2.stride) == ((2, 2), (1, 1))


def test_frozen_stages_stop_grads_and_keep_norms_in_eval() -> None:
    model = ResNetV1c(depth=18, frozen_stages=1)
    model.train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert not any(m.training for m in _batchnorms(model.stem) + _batchnorms(model.layer1))
    assert all(m.training for m in _batchnorms(model.layer2))
    frozen_mean = model.layer1[0].bn1.running_mean.clone()
    free_mean = model.layer2[0].bn1.running_mean.clone()
    model(_x())
    assert torch.equal(model.layer1[0].bn1.running_mean, frozen_mean)
    assert not torch.equal(model.layer2[0].bn1.running_mean, free_mean)


def test_frozen_stages_v1b_freezes_stem_conv_and_norm() -> None:
    model = ResNet(depth=18, frozen_stages=0).train()
    assert not model.conv1.weight.requires_grad and not model.bn1.weight.requires_grad
    assert not model.bn1.training
    assert model.layer1[0].bn1.training and model.layer1[0].conv1.weight.requires_grad


def test_norm_eval_keeps_every_batchnorm_in_eval() -> None:
    model = ResNetV1c(depth=18, norm_eval=True).train()
    assert model.training
    assert not any(m.training for m in _batchnorms(model))
    assert all(p.requires_grad for p in model.parameters())
    mean = model.stem[1].running_mean.clone()
    model(_x())
    assert torch.equal(model.stem[1].running_mean, mean)
    model.eval().train()
    assert not any(m.training for m in _batchnorms(model))


def test_group_norm_key_names() -> None:
    model = ResNet(depth=18, norm_cfg=dict(type="GN", num_groups=8))
    keys = set(model.state_dict())
    assert {"gn1.weight", "layer1.0.gn1.weight", "layer1.0.gn2.bias", "layer2.0.downsample.1.weight"} <= keys
    assert not any(".bn" in k or k.startswith("bn") or "running" in k for k in keys)
    assert isinstance(model.layer1[0].gn2, nn.GroupNorm) and model.layer1[0].gn2.num_groups == 8


def test_with_cp_gives_same_outputs_and_grads(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    plain = ResNetV1c(depth=18, zero_init_residual=False)
    ckpt = ResNetV1c(depth=18, zero_init_residual=False, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = _x()
    outs_plain, outs_ckpt = plain.train()(x), ckpt.train()(x)
    assert len(calls) == 8  # one per block
    for a, b in zip(outs_plain, outs_ckpt, strict=True):
        torch.testing.assert_close(a, b)
    sum(o.square().mean() for o in outs_plain).backward()
    sum(o.square().mean() for o in outs_ckpt).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    with torch.no_grad():
        ckpt.eval()(x)
    assert len(calls) == 8  # no checkpointing outside training


def test_default_init() -> None:
    model = ResNet(depth=18)
    assert torch.all(model.layer1[0].bn2.weight == 0) and torch.all(model.layer1[0].bn2.bias == 0)
    assert torch.all(model.layer1[0].bn1.weight == 1) and torch.all(model.layer1[0].bn1.bias == 0)
    w = model.layer3[1].conv1.weight  # kaiming normal, fan_out = 256 * 9
    assert abs(w.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.05
    assert torch.all(ResNet(depth=18, zero_init_residual=False).layer1[0].bn2.weight == 1)


def test_stores_init_settings_and_rejects_unsupported() -> None:
    model = ResNetV1c(depth=18, pretrained="open-mmlab://resnet18_v1c")
    assert model.pretrained == "open-mmlab://resnet18_v1c" and model.init_cfg is None
    init_cfg = dict(type="Pretrained", checkpoint="weights.pth")
    assert ResNet(depth=18, init_cfg=init_cfg).init_cfg == init_cfg
    with pytest.raises(ValueError, match="pretrained or init_cfg"):
        ResNet(depth=18, pretrained="a.pth", init_cfg=init_cfg)
    with pytest.raises(NotImplementedError, match="dcn"):
        ResNet(depth=50, dcn=dict(type="DCNv2"), stage_with_dcn=(False, True, True, True))
    with pytest.raises(NotImplementedError, match="plugins"):
        ResNet(depth=50, plugins=[dict(cfg=dict(type="ContextBlock"), position="after_conv3")])
    with pytest.raises(KeyError, match="depth 42"):
        ResNet(depth=42)
    with pytest.raises(ValueError, match="out_indices"):
        ResNet(depth=18, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1))
