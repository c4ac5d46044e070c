"""Export: ONNX (checked with onnxruntime against PyTorch at two input sizes) for one tiny model of every
method family in semseg/configs, the docs/export.md support table, preprocessing in the graph, slide
inference over an exported crop model, TorchScript and torch.export, and the ``semseg export`` command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semseg
from semseg.config import CONFIG_ROOT

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from semseg import export  # noqa: E402
from semseg.cli import export as export_cli  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
SHAPE = (64, 96)

# One zoo config per method folder, at tiny widths (cfg-options), auxiliary heads dropped.
R18 = {"model.backbone.depth": 18, "model.backbone.stem_channels": 8, "model.backbone.base_channels": 4,
       "model.auxiliary_head": None}
HEAD = {"model.decode_head.in_channels": 32, "model.decode_head.channels": 16}
HR = {f"model.backbone.extra.stage{i}.num_channels": tuple(4 * 2 ** j for j in range(1 if i == 1 else i)) for i in (1, 2, 3, 4)}
HR.update({f"model.backbone.extra.stage{i}.num_blocks": (1,) * (1 if i == 1 else i) for i in (1, 2, 3, 4)})
HR.update({"model.backbone.extra.stage3.num_modules": 1, "model.backbone.extra.stage4.num_modules": 1})
FAMILIES = {
    "fcn": ("fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "pspnet": ("pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "deeplabv3": ("deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "deeplabv3plus": ("deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024",
                      {**R18, **HEAD, "model.decode_head.c1_in_channels": 4, "model.decode_head.c1_channels": 4}),
    "upernet": ("upernet/upernet_r50_4xb2-40k_cityscapes-512x1024",
                {**R18, "model.decode_head.in_channels": [4, 8, 16, 32], "model.decode_head.channels": 8}),
    "sem_fpn": ("sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024",
                {**R18, "model.neck.in_channels": [4, 8, 16, 32], "model.neck.out_channels": 8,
                 "model.decode_head.in_channels": [8] * 4, "model.decode_head.channels": 4}),
    "ann": ("ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024",
            {**R18, "model.decode_head.in_channels": [16, 32], "model.decode_head.channels": 8,
             "model.decode_head.project_channels": 8}),
    "apcnet": ("apcnet/apcnet_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "ccnet": ("ccnet/ccnet_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "danet": ("danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "dmnet": ("dmnet/dmnet_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "dnlnet": ("dnlnet/dnl_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "emanet": ("emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024", {**R18, **HEAD}),
    "encnet": ("encnet/encnet_r50-d8_4xb2-40k_cityscapes-512x1024",
               {**R18, "model.decode_head.in_channels": [8, 16, 32], "model.decode_head.channels": 16}),
    "gcnet": ("gcnet/gcnet_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "nonlocal_net": ("nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "psanet": ("psanet/psanet_r50-d8_4xb2-40k_cityscapes-512x1024", {**R18, **HEAD}),
    "resnest": ("resnest/resnest_s101-d8_deeplabv3_4xb2-80k_cityscapes-512x1024",
                {"model.backbone.depth": 50, "model.backbone.stem_channels": 8, "model.backbone.base_channels": 4,
                 "model.auxiliary_head": None, "model.decode_head.in_channels": 128, "model.decode_head.channels": 8}),
    "hrnet": ("hrnet/fcn_hr18_4xb2-160k_cityscapes-512x1024",
              {**HR, "model.decode_head.in_channels": [4, 8, 16, 32], "model.decode_head.channels": 8}),
    "ocrnet": ("ocrnet/ocrnet_hr18_4xb2-160k_cityscapes-512x1024",
               {**HR, "model.decode_head.0.in_channels": [4, 8, 16, 32], "model.decode_head.0.channels": 8,
                "model.decode_head.1.in_channels": [4, 8, 16, 32], "model.decode_head.1.channels": 8,
                "model.decode_head.1.ocr_channels": 8}),
    "point_rend": ("point_rend/pointrend_r50_4xb2-80k_cityscapes-512x1024",
                   {**R18, "model.neck.in_channels": [4, 8, 16, 32], "model.neck.out_channels": 8,
                    "model.decode_head.0.in_channels": [8] * 4, "model.decode_head.0.channels": 4,
                    "model.decode_head.1.in_channels": [8], "model.decode_head.1.channels": 8}),
    "mobilenet_v2": ("mobilenet_v2/mobilenet-v2-d8_deeplabv3_4xb2-80k_cityscapes-512x1024",
                     {"model.backbone.widen_factor": 0.25, "model.auxiliary_head": None,
                      "model.decode_head.in_channels": 80, "model.decode_head.channels": 8}),
    "mobilenet_v3": ("mobilenet_v3/mobilenet-v3-d8-s_lraspp_4xb4-320k_cityscapes-512x1024",
                     {"model.decode_head.channels": 8}),
    "bisenetv2": ("bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024",
                  {"model.backbone.detail_channels": (8, 8, 16), "model.backbone.semantic_channels": (4, 8, 16, 16),
                   "model.backbone.bga_channels": 16, "model.auxiliary_head": None,
                   "model.decode_head.in_channels": 16, "model.decode_head.channels": 8}),
    "cgnet": ("cgnet/cgnet_fcn_4xb4-60k_cityscapes-680x680",
              {"model.backbone.num_channels": (8, 16, 32), "model.backbone.num_blocks": (1, 1),
               "model.decode_head.in_channels": 64, "model.decode_head.channels": 64}),
    "fastscnn": ("fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024", {"model.auxiliary_head": None}),
    "unet": ("unet/unet-s5-d16_deeplabv3_4xb4-40k_drive-64x64",
             {"model.backbone.base_channels": 4, "model.auxiliary_head": None,
              "model.decode_head.in_channels": 4, "model.decode_head.channels": 4}),
    "vit": ("vit/vit_deit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512",
            {"model.backbone.embed_dims": 16, "model.backbone.num_layers": 4, "model.backbone.num_heads": 2,
             "model.backbone.out_indices": (0, 1, 2, 3), "model.backbone.img_size": (64, 64),
             "model.neck.in_channels": [16] * 4, "model.neck.out_channels": 16, "model.auxiliary_head": None,
             "model.decode_head.in_channels": [16] * 4, "model.decode_head.channels": 8}),
    "setr": ("setr/setr_vit-l-mla_8xb1-160k_ade20k-512x512",
             {"model.backbone.embed_dims": 16, "model.backbone.num_layers": 4, "model.backbone.num_heads": 2,
              "model.backbone.out_indices": (0, 1, 2, 3), "model.backbone.img_size": (64, 64),
              "model.neck.in_channels": [16] * 4, "model.neck.out_channels": 8, "model.auxiliary_head": None,
              "model.decode_head.in_channels": (8,) * 4, "model.decode_head.channels": 16,
              "model.decode_head.mla_channels": 4, "model.test_cfg.crop_size": (64, 64), "model.test_cfg.stride": (40, 40)}),
    "swin": ("swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512",
             {"model.backbone.embed_dims": 8, "model.backbone.depths": [1, 1, 1, 1],
              "model.backbone.num_heads": [1, 1, 1, 1], "model.auxiliary_head": None,
              "model.decode_head.in_channels": [8, 16, 32, 64], "model.decode_head.channels": 8}),
}
TRACE_SHAPES = {"mobilenet_v3": (416, 416)}  # LR-ASPP's 49x49 image pool needs 392 px a side


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_norms_(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that a dropped or misplaced norm shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model


def tiny(family: str, **extra) -> nn.Module:
    config, options = FAMILIES[family]
    torch.manual_seed(0)
    model = semseg.init_model(CONFIG_ROOT / f"{config}.py", cfg_options={**options, **extra})
    return randomize_norms_(model).eval()


def logit_scale(model: nn.Module, shape: tuple[int, int]) -> float:
    """max(1, largest |logit|): the differences are float32 rounding, relative to the logits' size."""
    with torch.no_grad():
        return max(1.0, float(model.inference(torch.randn(1, 3, *shape)).abs().max()))


def support_table() -> dict[str, tuple[str, str, str]]:
    """docs/export.md's table: method -> (dynamic axes, sizes, reason)."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0].strip("`")] = (cells[2], cells[3], cells[4])
    return rows


def test_every_method_of_the_zoo_is_tested_and_in_the_table() -> None:
    methods = {p.name for p in CONFIG_ROOT.iterdir() if p.is_dir() and p.name not in ("_base_", "synthetic")}
    assert set(FAMILIES) == methods
    assert set(support_table()) == methods
    for method, (axes, _, reason) in support_table().items():
        if axes != "batch, height, width":
            assert reason, f"{method}: the table must say why it is not fully dynamic"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnx_matches_pytorch_at_two_sizes(family: str, tmp_path: Path) -> None:
    model = tiny(family)
    shape = TRACE_SHAPES.get(family, SHAPE)
    result = export.export_onnx(model, tmp_path / f"{family}.onnx", shape)
    axes, sizes, _ = support_table()[family]
    assert (", ".join(result.dynamic) or "none") == axes, family
    expected_sizes = {1: "any", 32: "traced + multiples of 32"}[result.metadata["size_step"]]
    assert sizes == (expected_sizes if "height" in result.dynamic else "traced size"), family
    assert len(result.max_abs_diff) == (2 if result.dynamic else 1)
    tolerance = 1e-4 * logit_scale(model, shape)
    for shape_name, diff in result.max_abs_diff.items():
        assert diff < tolerance, (family, shape_name, diff)
    if not result.dynamic:  # a static graph: a second size is a second export
        other = (shape[0] + 32, shape[1] + 64)
        result = export.export_onnx(model, tmp_path / f"{family}_2.onnx", other, dynamic=False)
        assert max(result.max_abs_diff.values()) < tolerance


def test_slide_mode_exports_the_crop_model_and_the_loop_matches_slide_inference(tmp_path: Path) -> None:
    model = tiny("unet", **{"model.test_cfg.crop_size": (32, 32), "model.test_cfg.stride": (21, 19)})
    result = export.export_onnx(model, tmp_path / "unet.onnx")
    assert result.shape == (1, 32, 32) and result.metadata["mode"] == "slide"
    assert result.metadata["crop_size"] == [32, 32] and result.metadata["stride"] == [21, 19]
    x = torch.randn(2, 3, 48, 80)  # 3 x 4 windows, overlapping unevenly
    with torch.no_grad():
        expected = model.inference(x)
    got = export.OnnxSegmentor(result.path)(x.numpy())
    assert got.shape == (2, 2, 48, 80)
    assert np.abs(got - expected.numpy()).max() < 1e-4
    np.testing.assert_array_equal(export.OnnxSegmentor(result.path).predict(x.numpy()), expected.argmax(1).numpy())


def test_slide_in_graph_tiles_one_fixed_size(tmp_path: Path) -> None:
    model = tiny("unet", **{"model.test_cfg.crop_size": (32, 32), "model.test_cfg.stride": (21, 19)})
    result = export.export_onnx(model, tmp_path / "unet.onnx", (48, 80), slide_in_graph=True)
    assert result.dynamic == ("batch",) and result.metadata["mode"] == "whole"
    assert max(result.max_abs_diff.values()) < 1e-4
    with pytest.raises(ValueError, match="slide"):
        export.export_onnx(tiny("fcn"), tmp_path / "fcn.onnx", slide_in_graph=True)


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_with_preprocess_takes_uint8_images_and_returns_labels(order: str, tmp_path: Path) -> None:
    model = tiny("fcn")
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(100)  # logits far apart: labels do not hinge on rounding
    result = export.export_onnx(model, tmp_path / "fcn.onnx", SHAPE, with_preprocess=True, input_order=order)
    assert result.dynamic == ("batch", "height", "width")
    images = np.random.default_rng(0).integers(0, 256, (2, 45, 61, 3), dtype=np.uint8)  # odd size
    bgr = images if order == "bgr" else images[..., ::-1]
    normalized = model.data_preprocessor.normalize_image  # the pipeline's way, one (3, H, W) BGR image each
    x = torch.stack([normalized(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))) for im in bgr])
    with torch.no_grad():
        logits = model.inference(x)
    session = export._session(result.path)
    assert [o.name for o in session.get_outputs()] == ["labels", "logits"]
    labels, got = session.run(None, {"image": images})
    assert labels.dtype == np.int64 and labels.shape == (2, 45, 61)
    assert np.abs(got - logits.numpy()).max() < 1e-4 * max(1.0, float(logits.abs().max()))
    np.testing.assert_array_equal(labels, logits.argmax(1).numpy())
    assert result.metadata["input_order"] == order and result.metadata["with_preprocess"]


def test_metadata_carries_classes_palette_and_mode(tmp_path: Path) -> None:
    model = tiny("fcn")
    model.dataset_meta = {"classes": [f"c{i}" for i in range(19)], "palette": [[i, i, i] for i in range(19)]}
    result = export.export_onnx(model, tmp_path / "fcn.onnx", SHAPE)
    meta = export.OnnxSegmentor(result.path).metadata
    assert meta["classes"][3] == "c3" and meta["palette"][2] == [2, 2, 2]
    assert meta["mode"] == "whole" and meta["num_classes"] == 19 and meta["dynamic_axes"] == ["batch", "height",
                                                                                              "width"]
    assert meta["mean"] == pytest.approx([123.675, 116.28, 103.53]) and meta["bgr_to_rgb"] is True


def test_torchscript_and_torch_export_round_trip(tmp_path: Path) -> None:
    model = tiny("pspnet")
    traced = export.export_torchscript(model, tmp_path / "psp.pt", SHAPE)
    assert traced.dynamic == ("batch", "height", "width") and max(traced.max_abs_diff.values()) < 1e-4
    program = export.export_program(model, tmp_path / "psp.pt2", SHAPE)
    assert max(program.max_abs_diff.values()) < 1e-4
    x = torch.randn(1, 3, *SHAPE)
    with torch.no_grad():
        expected = model.inference(x)
        assert torch.allclose(torch.jit.load(str(traced.path))(x), expected, atol=1e-4)
        assert torch.allclose(torch.export.load(str(program.path)).module()(x), expected, atol=1e-4)


def test_adaptive_pool_by_matrices_equals_torch() -> None:
    x = torch.randn(2, 3, 13, 17)
    for size in (1, 2, 3, 6, (4, 5), (13, 17)):
        assert torch.allclose(export.adaptive_avg_pool2d_by_matrices(x, size), F.adaptive_avg_pool2d(x, size),
                              atol=1e-6)


def test_errors(tmp_path: Path) -> None:
    model = tiny("fcn")
    with pytest.raises(ValueError, match="opset"):
        export.export_onnx(model, tmp_path / "a.onnx", opset=13)
    with pytest.raises(ValueError, match="input_order"):
        export.export_onnx(model, tmp_path / "a.onnx", with_preprocess=True, input_order="yuv")
    with pytest.raises(ValueError, match="eval"):
        export.export_onnx(model.train(), tmp_path / "a.onnx")


def test_missing_onnxruntime_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=re.escape("semseg[export]")):
        export._onnxruntime()


def test_cli_export_prints_the_difference(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    export_cli.register(parser.add_subparsers())
    config, options = FAMILIES["fcn"]
    out = tmp_path / "fcn.onnx"
    args = parser.parse_args(["export", str(CONFIG_ROOT / f"{config}.py"), "--out", str(out), "--shape", "64", "96",
                              "--cfg-options", *(f"{k}={v!r}".replace("'", "") for k, v in options.items())])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "dynamic axes: batch, height, width" in printed
    diffs = [float(v) for v in re.findall(r"max abs difference vs PyTorch at \S+: (\S+)", printed)]
    assert len(diffs) == 2 and max(diffs) < 1e-4
    help_text = parser.format_help() + export_cli.EPILOG
    assert "semseg export" in help_text
