"""EncNet's pieces: the encoding layer against a loop-per-pixel reference, the SE loss targets, the 1-d norm,
and EncHead's outputs, losses and argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.build import build
from semseg.models.heads.enc import build_norm_1d, class_presence
from semseg.nn.encoding import Encoding

NUM_CLASSES = 5
CHANNELS = (6, 8, 12)
SIZE = (13, 17)


def naive_encoding(x: torch.Tensor, codewords: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e[n, k] = sum_i softmax_k(s_k ||x_i - c_k||^2) (x_i - c_k), one pixel at a time."""
    n, c, h, w = x.shape
    k = codewords.shape[0]
    out = torch.zeros(n, k, c, dtype=x.dtype)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                xi = x[b, :, i, j]
                distances = torch.stack([scale[q] * ((xi - codewords[q]) ** 2).sum() for q in range(k)])
                weights = distances.softmax(0)
                for q in range(k):
                    out[b, q] += weights[q] * (xi - codewords[q])
    return out


def test_encoding_matches_a_loop_per_pixel() -> None:
    torch.manual_seed(0)
    enc = Encoding(channels=4, num_codes=3).double()
    with torch.no_grad():  # codewords near the inputs so that the soft assignment is not one-hot
        enc.codewords.normal_()
        enc.scale.uniform_(-0.5, -0.1)
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    got = enc(x)
    assert got.shape == (2, 3, 4)
    torch.testing.assert_close(got, naive_encoding(x, enc.codewords.detach(), enc.scale.detach()))


def test_encoding_gradients_reach_codewords_and_scale() -> None:
    enc = Encoding(channels=3, num_codes=2).double()
    x = torch.randn(1, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc, (x,))
    enc(x).square().sum().backward()
    assert enc.codewords.grad.abs().sum() > 0 and enc.scale.grad.abs().sum() > 0


def test_encoding_init_and_errors() -> None:
    enc = Encoding(channels=16, num_codes=4)
    assert set(enc.state_dict()) == {"codewords", "scale"}
    assert enc.codewords.shape == (4, 16) and enc.codewords.abs().max() <= 1 / 8
    assert enc.scale.shape == (4,) and (enc.scale <= 0).all() and (enc.scale >= -1).all()
    with pytest.raises(ValueError, match="Encoding expects"):
        enc(torch.randn(1, 8, 3, 3))
    with pytest.raises(ValueError, match="Encoding expects"):
        enc(torch.randn(16, 3, 3))
    with pytest.raises(ValueError, match="positive"):
        Encoding(channels=16, num_codes=0)


def test_class_presence() -> None:
    labels = torch.tensor([[[0, 3], [3, 255]], [[4, 4], [255, 255]], [[255, 255], [255, 255]]])
    expected = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    assert torch.equal(class_presence(labels, NUM_CLASSES), expected)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (3, 9, 11), generator=gen)
    naive = torch.tensor([[int((img == c).any()) for c in range(NUM_CLASSES)] for img in labels])
    assert torch.equal(class_presence(labels, NUM_CLASSES), naive)


@pytest.mark.parametrize(("norm_cfg", "cls"), [
    (None, nn.BatchNorm1d),
    (dict(type="BN"), nn.BatchNorm1d),
    (dict(type="SyncBN"), nn.BatchNorm1d),  # outside a process group
    (dict(type="IN", affine=True), nn.InstanceNorm1d),
    (dict(type="GN", num_groups=2), nn.GroupNorm),
])
def test_build_norm_1d(norm_cfg: dict | None, cls: type) -> None:
    norm = build_norm_1d(norm_cfg, 4)
    assert type(norm) is cls
    assert norm(torch.randn(2, 4, 6)).shape == (2, 4, 6)


def test_build_norm_1d_keeps_frozen_parameters() -> None:
    norm = build_norm_1d(dict(type="BN", requires_grad=False, eps=1e-3), 4)
    assert norm.eps == 1e-3 and not any(p.requires_grad for p in norm.parameters())


def head_cfg(**kwargs) -> dict:
    return dict(type="EncHead", in_channels=list(CHANNELS), in_index=[0, 1, 2], channels=8, num_codes=4,
                num_classes=NUM_CLASSES, norm_cfg=dict(type="BN")) | kwargs


def feats() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(2, c, *SIZE, generator=gen) for c in CHANNELS]


def labels() -> torch.Tensor:
    out = torch.randint(0, NUM_CLASSES, (2, 4 * SIZE[0], 4 * SIZE[1]), generator=torch.Generator().manual_seed(2))
    out[:, :3] = 255
    return out


@pytest.mark.parametrize("add_lateral", [False, True])
@pytest.mark.parametrize("use_se_loss", [False, True])
def test_head_outputs_and_losses(add_lateral: bool, use_se_loss: bool) -> None:
    torch.manual_seed(0)
    head = build("head", head_cfg(add_lateral=add_lateral, use_se_loss=use_se_loss))
    keys = set(head.state_dict())
    assert ("se_layer.weight" in keys) is use_se_loss
    assert ("fusion.conv.weight" in keys) is add_lateral
    assert ("lateral_convs.1.conv.weight" in keys) is add_lateral
    assert {"enc_module.encoding.0.codewords", "enc_module.encoding.1.running_mean", "enc_module.fc.0.weight",
            "enc_module.encoding_project.bn.weight"} <= keys
    for mode in (True, False):  # forward gives the logits alone, in training and inference
        head.train(mode)
        out = head(feats())
        assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_CLASSES, *SIZE)
    head.train()
    losses = head.loss(feats(), labels())
    assert set(losses) == {"loss_ce", "acc_seg"} | ({"loss_se"} if use_se_loss else set())
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert head.enc_module.encoding[0].codewords.grad.abs().sum() > 0
    if use_se_loss:
        assert head.se_layer.weight.grad.abs().sum() > 0


def test_se_loss_value() -> None:
    """``loss_se``: loss_weight (0.2) times the mean binary cross entropy of se_layer's class scores."""
    torch.manual_seed(0)
    head = build("head", head_cfg())
    head.eval()
    captured = {}
    head.se_layer.register_forward_hook(lambda _m, _i, out: captured.setdefault("scores", out))
    target = labels()
    loss = head.loss(feats(), target)["loss_se"]
    presence = torch.stack([torch.bincount(t[t != 255], minlength=NUM_CLASSES) > 0 for t in target]).float()
    expected = 0.2 * F.binary_cross_entropy_with_logits(captured["scores"], presence)
    torch.testing.assert_close(loss, expected)


def test_head_in_a_segmentor() -> None:
    torch.manual_seed(0)
    model = build("segmentor", dict(
        type="EncoderDecoder",
        backbone=dict(type="ResNetV1c", depth=18, stem_channels=8, base_channels=8, out_indices=(0, 1, 2, 3),
                      dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=dict(type="BN")),
        decode_head=head_cfg(in_channels=[16, 32, 64], in_index=(1, 2, 3)),
        test_cfg=dict(mode="whole"),
    ))
    x = torch.randn(2, 3, 33, 41)
    target = torch.randint(0, NUM_CLASSES, (2, 33, 41))
    model.train()
    assert set(model.loss(x, target)) == {"decode.loss_ce", "decode.acc_seg", "decode.loss_se"}
    model.eval()
    with torch.no_grad():
        assert model.inference(x).shape == (2, NUM_CLASSES, 33, 41)


def test_head_argument_errors() -> None:
    with pytest.raises(ValueError, match="multiple_select"):
        build("head", head_cfg(input_transform="resize_concat"))
    with pytest.raises(TypeError):
        build("head", head_cfg(in_channels=12, in_index=2))
    head = build("head", head_cfg(input_transform="multiple_select"))
    assert head.input_transform == "multiple_select"
