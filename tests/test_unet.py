"""U-Net (encoder, decoder, InterpConv / DeconvModule upsampling) and DiceLoss: shapes, strides, options,
errors, and references written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.build import build
from semseg.models.backbones.unet import DeconvModule, InterpConv, UNet, UpConvBlock
from semseg.models.losses import DiceLoss

THREE_STAGES = dict(num_stages=3, strides=(1, 1, 1), enc_num_convs=(1, 2, 2), dec_num_convs=(2, 1),
                    downsamples=(True, True), enc_dilations=(1, 1, 2), dec_dilations=(2, 1))


def _unet(**kwargs) -> UNet:
    torch.manual_seed(0)
    return build("backbone", dict(type="UNet", base_channels=4, **kwargs)).eval()


@pytest.mark.parametrize(
    ("kwargs", "strides"),
    [
        (dict(), [16, 8, 4, 2, 1]),
        (dict(upsample_cfg=dict(type="DeconvModule")), [16, 8, 4, 2, 1]),
        # stride-2 convs replace pools; a stage without either keeps the resolution (1x1 conv "upsample")
        (dict(strides=(1, 2, 2, 1, 1), downsamples=(True, True, False, True)), [8, 4, 4, 2, 1]),
        (THREE_STAGES, [4, 2, 1]),
    ],
)
def test_outputs_match_stated_channels_and_strides(kwargs: dict, strides: list[int]) -> None:
    model = _unet(**kwargs)
    stages = kwargs.get("num_stages", 5)
    assert model.out_channels == [4 * 2**i for i in reversed(range(stages))]
    assert model.out_strides == strides
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 32, 48))
    assert [tuple(o.shape) for o in outs] == [(2, c, 32 // s, 48 // s) for c, s in zip(model.out_channels,
                                                                                         strides, strict=True)]


def test_state_dict_layout() -> None:
    keys = set(_unet().state_dict()) | set(_unet(upsample_cfg=dict(type="DeconvModule")).state_dict())
    assert "encoder.0.0.convs.1.bn.running_var" in keys  # stage 0: no pool, the block is at index 0
    assert "encoder.1.1.convs.0.conv.weight" in keys  # stage 1: max pool at 0, block at 1
    assert "decoder.0.conv_block.convs.0.conv.weight" in keys
    assert "decoder.3.upsample.interp_upsample.1.conv.weight" in keys  # interpolation at 0, conv at 1
    assert "decoder.3.upsample.deconv_upsamping.0.bias" in keys  # MMSegmentation's spelling
    assert "decoder.3.upsample.deconv_upsamping.1.running_mean" in keys
    same_size = _unet(strides=(1, 1, 1, 1, 1), downsamples=(True, True, False, True)).state_dict()
    assert "decoder.2.upsample.conv.weight" in same_size  # no upsampling there: a 1x1 conv module


def test_input_size_must_be_divisible() -> None:
    with pytest.raises(ValueError, match=r"input size 40x48 must be divisible by 16"):
        _unet()(torch.randn(1, 3, 40, 48))
    with pytest.raises(ValueError, match=r"33x32 must be divisible by 2"):
        _unet(num_stages=2, strides=(1, 1), enc_num_convs=(1, 1), dec_num_convs=(1,), downsamples=(True,),
              enc_dilations=(1, 1), dec_dilations=(1,))(torch.randn(1, 3, 33, 32))
    # A stage without pool or stride-2 conv does not count.
    model = _unet(downsamples=(True, False, False, True))
    assert model.input_divisor == 4
    assert model(torch.randn(1, 3, 12, 20))[-1].shape[-2:] == (12, 20)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(strides=(1, 1, 1, 1)), ValueError, r"strides \(1, 1, 1, 1\) needs 5 entries"),
        (dict(enc_num_convs=(2, 2)), ValueError, "enc_num_convs"),
        (dict(dec_num_convs=(2, 2, 2, 2, 2)), ValueError, "dec_num_convs .* needs 4 entries"),
        (dict(downsamples=(True,)), ValueError, "downsamples"),
        (dict(enc_dilations=(1,)), ValueError, "enc_dilations"),
        (dict(dec_dilations=(1,)), ValueError, "dec_dilations"),
        (dict(strides=(1, 3, 1, 1, 1)), ValueError, "strides must be 1 or 2"),
        (dict(upsample_cfg=dict(type="PixelShuffle")), KeyError, "upsample_cfg type 'PixelShuffle'"),
        (dict(dcn=dict(type="DCN")), NotImplementedError, "dcn"),
        (dict(pretrained="a.pth", init_cfg=dict(type="Pretrained")), ValueError, "not both"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        UNet(base_channels=4, **kwargs)


def test_norm_eval_keeps_batchnorm_statistics() -> None:
    model = _unet(norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 16, 16))
    assert torch.equal(bns[0].running_mean, before)
    assert all(m.training for m in _unet().train().modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("upsample", ["InterpConv", "DeconvModule"])
def test_with_cp_same_output_and_gradients(upsample: str) -> None:
    x = torch.randn(2, 3, 8, 12)
    results = []
    for with_cp in (False, True):
        model = _unet(with_cp=with_cp, upsample_cfg=dict(type=upsample), **THREE_STAGES).train()
        inp = x.clone().requires_grad_()
        out = model(inp)[-1]
        out.square().mean().backward()
        results.append((out.detach(), inp.grad, model.encoder[0][0].convs[0].conv.weight.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def _bn_eval(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) \
        * bn.weight.view(shape) + bn.bias.view(shape)


def _randomize_norms(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(5)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


def _naive_transposed_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                           padding: int) -> torch.Tensor:
    """Each input pixel scatters its kernel-weighted values into the output (then the padding is cropped)."""
    n, _, h, w = x.shape
    k = weight.shape[-1]
    full = torch.zeros(n, weight.shape[1], (h - 1) * stride + k, (w - 1) * stride + k)
    for y in range(h):
        for xx in range(w):
            patch = torch.einsum("ni,iokl->nokl", x[:, :, y, xx], weight)
            full[:, :, y * stride:y * stride + k, xx * stride:xx * stride + k] += patch
    out = full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]
    return out + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize(("kernel_size", "scale_factor"), [(4, 2), (2, 2), (5, 3)])
def test_deconv_module_matches_reference(kernel_size: int, scale_factor: int) -> None:
    torch.manual_seed(1)
    module = DeconvModule(3, 5, kernel_size=kernel_size, scale_factor=scale_factor).eval()
    _randomize_norms(module)
    x = torch.randn(2, 3, 5, 7)
    deconv, bn = module.deconv_upsamping[0], module.deconv_upsamping[1]
    expected = _naive_transposed_conv(x, deconv.weight, deconv.bias, scale_factor, (kernel_size - scale_factor) // 2)
    expected = _bn_eval(expected, bn).clamp(min=0)
    with torch.no_grad():
        got = module(x)
    assert got.shape == (2, 5, 5 * scale_factor, 7 * scale_factor)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="kernel_size - scale_factor must be even"):
        DeconvModule(3, 5, kernel_size=3, scale_factor=2)


@pytest.mark.parametrize("conv_first", [False, True])
def test_interp_conv_matches_reference(conv_first: bool) -> None:
    torch.manual_seed(2)
    module = InterpConv(3, 4, conv_first=conv_first, kernel_size=3, padding=1).eval()
    _randomize_norms(module)
    x = torch.randn(2, 3, 5, 7)
    conv_module = module.interp_upsample[0 if conv_first else 1]

    def conv(t: torch.Tensor) -> torch.Tensor:
        return _bn_eval(F.conv2d(t, conv_module.conv.weight, padding=1), conv_module.bn).clamp(min=0)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(2 * t.shape[2], 2 * t.shape[3]), mode="bilinear", align_corners=False)

    expected = up(conv(x)) if conv_first else conv(up(x))
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)
    nearest = InterpConv(3, 4, upsample_cfg=dict(size=(9, 11), mode="nearest")).eval()
    assert nearest(x).shape == (2, 4, 9, 11)


def test_up_conv_block_concatenates_skip_first() -> None:
    torch.manual_seed(3)
    block = UpConvBlock(8, 4, 4, num_convs=1, norm_cfg=None, act_cfg=None, upsample_cfg=None).eval()
    skip, x = torch.randn(1, 4, 6, 6), torch.randn(1, 8, 6, 6)
    conv = block.conv_block.convs[0].conv
    expected = F.conv2d(torch.cat([skip, F.conv2d(x, block.upsample.conv.weight, block.upsample.conv.bias)], 1),
                        conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(block(skip, x), expected)


# --- DiceLoss --------------------------------------------------------------------------------------------


def _naive_dice(logits: torch.Tensor, labels: torch.Tensor, use_sigmoid: bool, naive: bool, eps: float,
                skip_channel: int | None) -> torch.Tensor:
    """Per image, loops over classes and pixels: (N,) losses. Labels outside 0..C-1 are in no class."""
    n, c, h, w = logits.shape
    probs = logits.sigmoid() if use_sigmoid else (logits.softmax(1) if c > 1 else logits)
    losses = []
    for i in range(n):
        inter = sum_p = sum_t = 0.0
        for k in range(c):
            if k == skip_channel:
                continue
            for y in range(h):
                for x in range(w):
                    p = probs[i, k, y, x].item()
                    t = 1.0 if max(labels[i, y, x].item(), 0) == k else 0.0
                    inter += p * t
                    sum_p += p if naive else p * p
                    sum_t += t
        dice = (2 * inter + eps) / (sum_p + sum_t + eps) if naive else 2 * inter / (sum_p + sum_t + 2 * eps)
        losses.append(1 - dice)
    return torch.tensor(losses)


@pytest.mark.parametrize("num_classes", [1, 2, 4])
@pytest.mark.parametrize("use_sigmoid", [True, False])
@pytest.mark.parametrize("naive_dice", [True, False])
def test_dice_loss_matches_reference(num_classes: int, use_sigmoid: bool, naive_dice: bool) -> None:
    gen = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(2, num_classes, 5, 7, generator=gen)
    labels = torch.randint(0, max(num_classes, 2), (2, 5, 7), generator=gen)
    labels[:, 0] = 255  # ignored: no target, but the prediction still counts
    labels[1, 1, :2] = -1  # negative labels count as class 0, as in MMSegmentation
    loss = build("loss", dict(type="DiceLoss", use_sigmoid=use_sigmoid, naive_dice=naive_dice, loss_weight=3.0,
                              eps=0.01))
    expected = _naive_dice(logits, labels, use_sigmoid, naive_dice, 0.01, None)
    torch.testing.assert_close(loss(logits, labels), 3.0 * expected.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss(logits, labels, reduction_override="none"), 3.0 * expected)
    torch.testing.assert_close(loss(logits, labels, reduction_override="sum"), 3.0 * expected.sum())
    weight = torch.tensor([0.25, 2.0])
    torch.testing.assert_close(loss(logits, labels, weight=weight, avg_factor=4.0),
                               3.0 * (expected * weight).sum() / 4.0, atol=1e-5, rtol=1e-5)


def test_dice_loss_ignore_index_names_a_channel() -> None:
    gen = torch.Generator().manual_seed(7)
    logits, labels = torch.randn(2, 3, 4, 6, generator=gen), torch.randint(0, 3, (2, 4, 6), generator=gen)
    loss = DiceLoss(use_sigmoid=False, ignore_index=1)
    expected = _naive_dice(logits, labels, False, False, 1e-3, skip_channel=1)
    torch.testing.assert_close(loss(logits, labels, ignore_index=255), expected.mean())
    with pytest.raises(ValueError, match="only class channel"):
        DiceLoss(ignore_index=0)(logits[:, :1], labels)


def test_dice_loss_options_and_errors() -> None:
    probs = torch.rand(2, 2, 3, 3)
    one_hot = F.one_hot(torch.randint(0, 2, (2, 3, 3)), 2).permute(0, 3, 1, 2)
    plain = DiceLoss(activate=False)
    assert plain.loss_name == "loss_dice" and DiceLoss(loss_name="loss_x").loss_name == "loss_x"
    # targets shaped like the predictions are used as given; without activation probs are used as given
    torch.testing.assert_close(plain(probs, one_hot), plain(probs, one_hot.argmax(1)))
    assert plain(one_hot.float(), one_hot).item() == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="one value per image"):
        plain(probs, one_hot, weight=torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="reduction"):
        DiceLoss(reduction="max")
    with pytest.raises(ValueError, match="reduction_override"):
        plain(probs, one_hot, reduction_override="max")


def test_gradients_flow_through_dice() -> None:
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    DiceLoss(use_sigmoid=False)(logits, torch.randint(0, 2, (2, 4, 4))).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_decode_head_reports_ce_and_dice_separately() -> None:
    torch.manual_seed(4)
    head = build("head", dict(
        type="FCNHead", in_channels=4, channels=4, num_convs=1, concat_input=False, num_classes=2,
        in_index=-1, dropout_ratio=0.0, loss_decode=[
            dict(type="CrossEntropyLoss", loss_name="loss_ce", loss_weight=1.0),
            dict(type="DiceLoss", loss_name="loss_dice", loss_weight=3.0),
        ],
    ))
    feats = [torch.randn(2, 4, 8, 8)]
    labels = torch.randint(0, 2, (2, 8, 8))
    labels[:, :2] = 255
    losses = head.loss(feats, labels)
    assert set(losses) == {"loss_ce", "loss_dice", "acc_seg"}
    logits = head(feats)
    torch.testing.assert_close(losses["loss_dice"], DiceLoss(loss_weight=3.0)(logits, labels))
