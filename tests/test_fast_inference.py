"""Inference speed options: batched slide inference, its accumulation buffer, BatchNorm folding, channels-last,
inference mode, reduced precision and torch.compile; each agrees with the exact path, which stays exact."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import semseg
from semseg.build import build
from semseg.models.inference import merge_views, restore_view, slide_inference, slide_windows
from semseg.nn.conv_module import ConvModule
from semseg.nn.fuse import fold_batchnorm_

CROP, STRIDE = (16, 24), (11, 13)  # on 37x53: 3 x 4 windows, overlapping unevenly, not dividing the image

BACKBONES = {
    "v1c": dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8, out_indices=(2, 3),
                strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
    "v1b": dict(type="ResNet", depth=18, stem_channels=16, base_channels=8, out_indices=(2, 3),
                strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
    "v1d-50": dict(type="ResNetV1d", depth=50, stem_channels=8, base_channels=4, out_indices=(2, 3),
                   strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
}
HEADS = {
    "fcn": dict(type="FCNHead", in_channels=64, channels=8, num_convs=2, concat_input=True, num_classes=5,
                in_index=1, dropout_ratio=0.0),
    "psp": dict(type="PSPHead", in_channels=64, channels=8, pool_scales=(1, 2, 3, 6), num_classes=5,
                in_index=1, dropout_ratio=0.0),
    "sep_aspp": dict(type="DepthwiseSeparableASPPHead", in_channels=64, channels=8, dilations=(1, 2, 3),
                     c1_in_channels=32, c1_channels=4, num_classes=5, in_index=1, dropout_ratio=0.0),
}


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on the shared 2-core machine, spinning OpenMP threads of two busy processes stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_norms_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (the defaults 0, 1, 1, 0 would hide a wrong fold)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model


def model_cfg(backbone: str = "v1c", head: str = "fcn", test_cfg: dict | None = None) -> dict:
    in_channels = 128 if backbone == "v1d-50" else 64  # the last stage's channels (expansion 4 vs 1)
    c1 = {"c1_in_channels": 64} if backbone == "v1d-50" and head == "sep_aspp" else {}
    decode = {**HEADS[head], "in_channels": in_channels, **c1}
    return dict(type="EncoderDecoder", backbone=BACKBONES[backbone], decode_head=decode,
                test_cfg=test_cfg or dict(mode="whole"))


def segmentor(backbone: str = "v1c", head: str = "fcn", test_cfg: dict | None = None):
    torch.manual_seed(0)
    return randomize_norms_(build("segmentor", model_cfg(backbone, head, test_cfg))).eval()


def window_by_window(model, x: torch.Tensor, crop, stride) -> torch.Tensor:
    """The reference: each window of every image through the network on its own, logits averaged."""
    total = torch.zeros(x.shape[0], model.out_channels, *x.shape[2:])
    counts = torch.zeros(x.shape[2:])
    for y1, y2, x1, x2 in slide_windows(*x.shape[2:], crop, stride):
        total[:, :, y1:y2, x1:x2] += model.encode_decode(x[:, :, y1:y2, x1:x2])
        counts[y1:y2, x1:x2] += 1
    return total / counts


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: the logits of random-weight models are large, so the scale is stated."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


class CropRecorder:
    """Wraps a segmentor, recording the batch size of every ``encode_decode`` call."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.out_channels = model.out_channels

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.model.encode_decode(x)


# ------------------------------------------------------------------------------------------- batched slide
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batched_slide_equals_window_by_window(batch_size: int) -> None:
    model = segmentor()
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    recorder = CropRecorder(model)
    with torch.no_grad():
        expected = window_by_window(model, x, CROP, STRIDE)
        got = slide_inference(recorder, x, CROP, STRIDE, batch_size=batch_size)
    windows = len(slide_windows(37, 53, CROP, STRIDE))
    per_pass = max(1, batch_size // 2)  # whole windows of both images: 1 -> 2 crops, 2 -> 2, 5 -> 4
    assert windows == 12 and recorder.calls == [2 * per_pass] * (windows // per_pass)
    assert expected.abs().max() > 1.0
    if batch_size == 1:
        assert torch.equal(got, expected)  # MMSegmentation's loop, bit for bit
    else:
        assert relative_diff(got, expected) < 1e-5


def test_batched_slide_single_image_uneven_last_batch() -> None:
    model = segmentor(head="psp")
    x = torch.randn(1, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    recorder = CropRecorder(model)
    with torch.no_grad():
        got = slide_inference(recorder, x, CROP, STRIDE, batch_size=5)
        expected = window_by_window(model, x, CROP, STRIDE)
    assert recorder.calls == [5, 5, 2]  # 12 windows, 5 crops a pass, the last pass shorter
    assert relative_diff(got, expected) < 1e-5


def test_batched_slide_image_smaller_than_crop_on_one_side() -> None:
    model = segmentor()
    x = torch.randn(2, 3, 13, 61, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = slide_inference(model, x, CROP, STRIDE, batch_size=4)
        expected = window_by_window(model, x, CROP, STRIDE)
    assert relative_diff(got, expected) < 1e-5


def test_segmentor_reads_slide_batch_size_from_test_cfg() -> None:
    cfg = dict(mode="slide", crop_size=CROP, stride=STRIDE, batch_size=4)
    model = segmentor(test_cfg=cfg)
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.inference(x)
        expected = slide_inference(model, x, CROP, STRIDE, batch_size=4)
        model.test_cfg = {k: v for k, v in cfg.items() if k != "batch_size"}
        default = model.inference(x)
    assert torch.equal(got, expected)
    assert torch.equal(default, window_by_window(model, x, CROP, STRIDE))  # default: window by window


def test_slide_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        slide_inference(segmentor(), torch.randn(1, 3, 20, 20), CROP, STRIDE, batch_size=0)


# ------------------------------------------------------------------------------------- accumulation buffer
def test_accumulate_on_cpu_is_exact_and_in_another_dtype_close() -> None:
    model = segmentor()
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = slide_inference(model, x, CROP, STRIDE, batch_size=2)
        on_cpu = slide_inference(model, x, CROP, STRIDE, batch_size=2, accumulate_device="cpu")
        double = slide_inference(model, x, CROP, STRIDE, batch_size=2, accumulate_dtype="float64")
        half = slide_inference(model, x, CROP, STRIDE, batch_size=2, accumulate_device=torch.device("cpu"),
                               accumulate_dtype=torch.bfloat16)
    assert torch.equal(on_cpu, plain) and on_cpu.device.type == "cpu"
    assert double.dtype == torch.float64 and relative_diff(double, plain) < 1e-6
    assert half.dtype == torch.bfloat16 and relative_diff(half, plain) < 2e-2  # 8-bit mantissa
    restored = restore_view(model, half, {"img_shape": (30, 40), "ori_shape": (45, 60)})
    assert restored.dtype == torch.float32 and restored.shape == (2, 5, 45, 60)  # resized in float32


def test_accumulate_options_through_test_cfg() -> None:
    cfg = dict(mode="slide", crop_size=CROP, stride=STRIDE, batch_size=3, accumulate_device="cpu",
               accumulate_dtype="float64")
    model = segmentor(test_cfg=cfg)
    x = torch.randn(1, 3, 37, 53, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model.inference(x)
        expected = window_by_window(model, x, CROP, STRIDE)
    assert got.dtype == torch.float64 and relative_diff(got, expected) < 1e-5


@pytest.mark.parametrize("dtype", ["int32", "float128", "nonsense"])
def test_accumulate_dtype_must_name_a_float_dtype(dtype: str) -> None:
    with pytest.raises(ValueError, match="accumulate_dtype"):
        slide_inference(segmentor(), torch.randn(1, 3, 20, 20), CROP, STRIDE, accumulate_dtype=dtype)


# --------------------------------------------------------------------------------------------------- fusion
def test_fold_batchnorm_matches_conv_then_norm() -> None:
    torch.manual_seed(0)
    for bias, affine in [(False, True), (True, False), (True, True)]:
        conv = nn.Conv2d(6, 4, 3, padding=2, dilation=2, groups=2, bias=bias)
        bn = randomize_norms_(nn.BatchNorm2d(4, affine=affine, eps=1e-3)).eval() if affine else \
            nn.BatchNorm2d(4, affine=False).eval()
        if not affine:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 1.5)
        x = torch.randn(2, 6, 9, 11)
        with torch.no_grad():
            expected = bn(conv(x))
            fold_batchnorm_(conv, bn)
            got = conv(x)
        assert conv.bias is not None and isinstance(conv.bias, nn.Parameter)
        assert relative_diff(got, expected) < 1e-6


@pytest.mark.parametrize("backbone,head", [("v1c", "fcn"), ("v1b", "psp"), ("v1d-50", "sep_aspp")])
def test_fuse_keeps_logits_and_removes_every_norm(backbone: str, head: str) -> None:
    model = segmentor(backbone, head)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model.encode_decode(x)
        fused = semseg.fuse(model)
        got = fused.encode_decode(x)
    assert fused is model
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert expected.abs().max() > 1.0
    assert relative_diff(got, expected) < 1e-5
    keys = set(fused.state_dict())
    assert not any(".bn" in key or "running_mean" in key for key in keys)
    assert "decode_head.conv_seg.bias" in keys and "backbone.layer1.0.conv1.bias" in keys
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
        fused.load_state_dict(state)  # an MMSegmentation-layout state dict no longer loads


def test_fuse_refuses_training_mode_and_skips_norms_not_after_a_conv() -> None:
    with pytest.raises(RuntimeError, match="eval"):
        semseg.fuse(segmentor().train())
    norm_first = ConvModule(4, 6, 3, padding=1, norm_cfg=dict(type="BN"), order=("norm", "conv", "act"))
    act_between = ConvModule(6, 6, 3, padding=1, norm_cfg=dict(type="BN"), order=("conv", "act", "norm"))
    block = nn.Sequential(norm_first, act_between).eval()
    x = torch.randn(2, 4, 7, 9)
    with torch.no_grad():
        expected = block(x)
        semseg.fuse(block)
        got = block(x)
    assert isinstance(norm_first.bn, nn.BatchNorm2d) and isinstance(act_between.bn, nn.BatchNorm2d)
    assert torch.equal(got, expected)


# ------------------------------------------------------------------------------- init_model options, modes
def test_init_model_options_keep_the_logits(tmp_path) -> None:
    cfg = dict(model=model_cfg("v1c", "psp", dict(mode="slide", crop_size=CROP, stride=STRIDE, batch_size=4)))
    reference = segmentor("v1c", "psp")
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(7))
    plain = semseg.init_model(cfg, path)
    fast = semseg.init_model(cfg, path, fuse=True, channels_last=True, inference_mode=True)
    assert (plain.precision, plain.channels_last, plain.use_inference_mode) == ("fp32", False, False)
    assert (fast.precision, fast.channels_last, fast.use_inference_mode) == ("fp32", True, True)
    assert fast.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = plain.inference(x)
    got = fast.inference(x)
    assert got.is_inference() and not expected.is_inference()
    assert relative_diff(got, expected) < 1e-5


def test_inference_mode_and_channels_last_alone_are_exact_or_close() -> None:
    model = segmentor("v1b", "fcn")
    x = torch.randn(2, 3, 29, 31, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = model.inference(x)
    model.use_inference_mode = True
    assert torch.equal(model.inference(x), expected)
    model.use_inference_mode = False
    model.channels_last = True
    model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert relative_diff(model.inference(x), expected) < 1e-5


# ------------------------------------------------------------------------------------------------ precision
def test_fp16_needs_cuda_and_unknown_precisions_are_named(tmp_path) -> None:
    cfg = dict(model=model_cfg())
    with pytest.raises(ValueError, match="CUDA"):
        semseg.init_model(cfg, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        semseg.init_model(cfg, precision="int8")
    model = segmentor()
    model.precision = "fp16"  # set by hand, then run on a CPU
    with pytest.raises(ValueError, match="CUDA"):
        model.inference(torch.randn(1, 3, 17, 19))


def test_bf16_runs_the_network_in_bf16_and_returns_float32() -> None:
    model = segmentor("v1c", "psp")
    x = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model.encode_decode(x)
        model.precision = "bf16"
        got = model.encode_decode(x)
        slid = slide_inference(model, x, CROP, STRIDE, batch_size=4)
        views = [(x[:1], {"img_shape": (37, 53), "ori_shape": (37, 53)}),
                 (x[:1].flip(3), {"img_shape": (37, 53), "ori_shape": (37, 53), "flip": True})]
        probs = merge_views(model, views)
    assert got.dtype == slid.dtype == probs.dtype == torch.float32
    assert not torch.equal(got, expected)  # autocast was on
    assert relative_diff(got, expected) < 0.05
    assert torch.allclose(probs.sum(1), torch.ones(1, 37, 53), atol=1e-5)  # softmax in float32


def test_run_test_passes_precision_and_fuse(monkeypatch) -> None:
    import semseg.engine.testing as testing

    seen = {}

    def fake_init_model(*args, **kwargs):
        seen.update(kwargs)
        raise KeyError("stop here")

    monkeypatch.setattr(testing, "init_model", fake_init_model)
    with pytest.raises(KeyError, match="stop here"):
        testing.run_test("cfg.py", None, device="cpu", precision="bf16", fuse=True)
    assert seen["precision"] == "bf16" and seen["fuse"] is True


# ------------------------------------------------------------------------------------------------- compile
TINY = dict(model=dict(
    type="EncoderDecoder",
    backbone=dict(type="ResNetV1c", depth=18, stem_channels=8, base_channels=4, num_stages=2,
                  out_indices=(1,), strides=(1, 2), dilations=(1, 1)),
    decode_head=dict(type="FCNHead", in_channels=8, channels=4, num_convs=1, num_classes=3, in_index=0,
                     dropout_ratio=0.0)))


def test_compile_reports_compile_time_apart() -> None:
    """Through Dynamo with the ``aot_eager`` backend: inductor's C++ compilation takes ~20 s here when cold."""
    torch.manual_seed(0)
    cfg = TINY
    eager = semseg.init_model(cfg)
    compiled = semseg.init_model(cfg, compile=dict(backend="aot_eager"))
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(1, 3, 24, 32, generator=torch.Generator().manual_seed(10))
    assert compiled.compile_seconds is None
    with torch.no_grad():
        first = compiled.inference(x)
        seconds = compiled.compile_seconds
        second = compiled.inference(x)
        expected = eager.inference(x)
    assert seconds is not None and seconds > 0 and compiled.compile_seconds == seconds  # first call only
    assert math.isfinite(seconds)
    assert torch.allclose(first, expected, atol=1e-4) and torch.equal(first, second)
    with pytest.raises(TypeError, match="compile must be"):
        semseg.init_model(cfg, compile="yes")


def test_compile_freezes_weights_while_compiling() -> None:
    """``freeze_weights`` (what ``compile=True`` asks for) is in inductor's config while the graph compiles."""
    import torch._inductor.config as inductor_config

    seen = []

    def backend(graph, example_inputs):
        seen.append(inductor_config.freezing)
        return graph.forward

    for freeze in (True, False):
        model = semseg.init_model(TINY, compile=dict(backend=backend, freeze_weights=freeze))
        with torch.no_grad():
            model.inference(torch.randn(1, 3, 24, 32))
    assert seen == [True, False] and inductor_config.freezing is False
