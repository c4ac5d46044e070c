"""HRNet backbone: shapes, strides, key names, argument errors, freezing, checkpointing, fusion."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.models.backbones.hrnet import HRModule, HRNet, _upsample
from semseg.models.backbones.resnet import BasicBlock
from semseg.nn.fuse import fuse


def _extra(widths: tuple[int, ...] = (4, 8, 12, 16), block: str = "BASIC") -> dict:
    return dict(
        stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(8,)),
        stage2=dict(num_modules=1, num_branches=2, block=block, num_blocks=(1, 1), num_channels=widths[:2]),
        stage3=dict(num_modules=2, num_branches=3, block=block, num_blocks=(1, 1, 1), num_channels=widths[:3]),
        stage4=dict(num_modules=2, num_branches=4, block=block, num_blocks=(1, 1, 1, 1), num_channels=widths),
    )


def _x(h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_output_shapes_channels_and_strides() -> None:
    model = build("backbone", dict(type="HRNet", extra=_extra())).eval()
    assert model.out_channels == [4, 8, 12, 16]
    assert model.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        outs = model(_x())
    assert [tuple(o.shape) for o in outs] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 12, 4, 4), (2, 16, 2, 2)]


def test_odd_sizes_round_up() -> None:
    model = HRNet(extra=_extra()).eval()
    with torch.no_grad():
        outs = model(_x(13, 17))
    assert [tuple(o.shape[2:]) for o in outs] == [(4, 5), (2, 3), (1, 2), (1, 1)]


def test_bottleneck_branches_expand_channels() -> None:
    model = HRNet(extra=_extra((2, 4, 6, 8), block="BOTTLENECK")).eval()
    assert model.out_channels == [8, 16, 24, 32]
    with torch.no_grad():
        assert [o.shape[1] for o in model(_x(32, 32))] == [8, 16, 24, 32]


def test_single_output() -> None:
    model = HRNet(extra=_extra(), multiscale_output=False).eval()
    assert model.out_channels == [4] and model.out_strides == [4]
    assert len(model.stage4[-1].fuse_layers) == 1 and len(model.stage4[0].fuse_layers) == 4
    with torch.no_grad():
        (out,) = model(_x(32, 32))
    assert out.shape == (2, 4, 8, 8)


def test_key_names() -> None:
    keys = set(HRNet(extra=_extra()).state_dict())
    assert {
        "conv1.weight", "bn1.running_mean", "conv2.weight", "bn2.weight",
        "layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
        "transition1.0.0.weight", "transition1.0.1.weight",  # 32 -> 4 channels at stride 4
        "transition1.1.0.0.weight", "transition2.2.0.1.bias", "transition3.3.0.0.weight",  # new branches
        "stage2.0.branches.1.0.conv2.weight", "stage2.0.fuse_layers.0.1.0.weight",
        "stage4.1.fuse_layers.3.0.2.0.weight", "stage4.1.fuse_layers.3.0.0.1.running_mean",
    } <= keys
    assert not any(k.startswith(("transition2.0", "transition2.1", "stage2.0.fuse_layers.0.0")) for k in keys)
    assert not any(".fuse_layers.1.0.0.2" in k for k in keys)  # one stride-2 step only from branch 0 to 1


def test_group_norm_key_names() -> None:
    keys = set(HRNet(extra=_extra((8, 12, 16, 20)), norm_cfg=dict(type="GN", num_groups=4)).state_dict())
    assert {"gn1.weight", "gn2.bias", "layer1.0.gn3.weight", "stage3.0.branches.0.0.gn1.weight"} <= keys
    assert not any("bn" in k for k in keys)


@pytest.mark.parametrize("change, error", [
    (lambda e: e.pop("stage3"), KeyError),
    (lambda e: e["stage2"].pop("num_modules"), KeyError),
    (lambda e: e["stage2"].update(block="BASICX"), KeyError),
    (lambda e: e["stage3"].update(num_blocks=(1, 1)), ValueError),
    (lambda e: e["stage4"].update(num_modules=0), ValueError),
    (lambda e: e["stage1"].update(num_branches=2, num_blocks=(1, 1), num_channels=(8, 8)), ValueError),
    (lambda e: e["stage4"].update(num_branches=2, num_blocks=(1, 1), num_channels=(4, 8)), ValueError),
])
def test_bad_extra(change, error) -> None:
    extra = copy.deepcopy(_extra())
    change(extra)
    with pytest.raises(error):
        HRNet(extra=extra)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="frozen_stages"):
        HRNet(extra=_extra(), frozen_stages=5)
    with pytest.raises(ValueError, match="pretrained or init_cfg"):
        HRNet(extra=_extra(), pretrained="x.pth", init_cfg=dict(type="Pretrained", checkpoint="x.pth"))
    with pytest.raises(TypeError, match="pretrained"):
        HRNet(extra=_extra(), pretrained=1)
    with pytest.raises(ValueError, match="one entry per branch"):
        HRModule(BasicBlock, (1, 1), (4, 8), (4,))


def _trainable_prefixes(model: nn.Module) -> set[str]:
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_stages() -> None:
    model = HRNet(extra=_extra(), frozen_stages=2).train()
    assert _trainable_prefixes(model) == {"stage3", "transition3", "stage4"}
    assert not model.bn1.training and not model.layer1.training and not model.stage2.training
    assert not model.transition2[2][0][1].training
    assert model.stage3.training and model.stage4[0].fuse_layers[0][1][1].training
    frozen_all = HRNet(extra=_extra(), frozen_stages=4).train()
    assert not any(p.requires_grad for p in frozen_all.parameters())
    assert not any(m.training for m in frozen_all.modules() if isinstance(m, nn.BatchNorm2d))
    assert _trainable_prefixes(HRNet(extra=_extra(), frozen_stages=0)) == \
        {"layer1", "transition1", "stage2", "transition2", "stage3", "transition3", "stage4"}


def test_norm_eval_keeps_statistics() -> None:
    model = HRNet(extra=_extra(), norm_eval=True).train()
    assert model.training
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = model.stage4[1].fuse_layers[0][3][1].running_mean.clone()
    model(_x(32, 32))
    assert torch.equal(before, model.stage4[1].fuse_layers[0][3][1].running_mean)


def test_with_cp_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    plain = HRNet(extra=_extra())
    ckpt = HRNet(extra=_extra(), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for model in (plain, ckpt):
        x = _x(29, 37).requires_grad_()
        sum(o.square().mean() for o in model.train()(x)).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_zero_init_residual() -> None:
    model = HRNet(extra=_extra(), zero_init_residual=True)
    assert not model.stage2[0].branches[0][0].bn2.weight.any()
    assert not model.layer1[0].bn3.weight.any()
    assert HRNet(extra=_extra()).stage2[0].branches[0][0].bn2.weight.all()


def test_upsample_two_steps_on_odd_sizes() -> None:
    """The fuse path scales by 2**k, then resizes to the target: on odd sizes not one direct resize."""
    x = torch.randn(1, 2, 3, 5, generator=torch.Generator().manual_seed(1))
    even = _upsample(x, 2, torch.Size((6, 10)))
    assert torch.allclose(even, nn.functional.interpolate(x, size=(6, 10), mode="bilinear"))
    odd = _upsample(x, 2, torch.Size((5, 9)))
    twice = nn.functional.interpolate(nn.functional.interpolate(x, size=(6, 10), mode="bilinear"),
                                      size=(5, 9), mode="bilinear")
    assert torch.equal(odd, twice)
    assert not torch.allclose(odd, nn.functional.interpolate(x, size=(5, 9), mode="bilinear"))


def test_fuse_folds_every_batchnorm() -> None:
    torch.manual_seed(0)
    model = HRNet(extra=_extra()).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 1.5)
    x = _x(27, 33)
    with torch.no_grad():
        expected = model(x)
        got = fuse(model)(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for g, e in zip(got, expected, strict=True):  # outputs reach ~1e2 here: compare relative to their scale
        assert (g - e).abs().max() < 1e-5 * e.abs().max()
