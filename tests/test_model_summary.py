"""A segmentor summarizes itself: backbone, heads, classes, output, inference mode and parameter counts;
``print(model)`` keeps the module tree, and Jupyter shows the summary with the tree folded under it."""

from __future__ import annotations

import warnings

import semseg
from semseg.models.segmentor import EncoderDecoder
from semseg.models.summary import ModelSummary, summarize, summary_html

TINY = {"model.backbone.stem_channels": 8, "model.backbone.base_channels": 4,
        "model.decode_head.in_channels": 32, "model.decode_head.channels": 8,
        "model.auxiliary_head.in_channels": 16, "model.auxiliary_head.channels": 4}


def tiny(name: str = "fcn_r18-d8_1xb8-600_synthetic-96x96", **options) -> EncoderDecoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, on purpose
        return semseg.init_model(name, cfg_options={**TINY, **options})


def test_summary_names_parts_classes_output_and_counts() -> None:
    model = tiny(**{"model.test_cfg": dict(mode="slide", crop_size=(64, 64), stride=(48, 32))})
    model.backbone.stem[0].weight.requires_grad_(False)
    summary = summarize(model)
    backbone, head, aux = (sum(p.numel() for p in m.parameters())
                           for m in (model.backbone, model.decode_head, model.auxiliary_head))
    assert summary.parts == [("backbone", "ResNetV1c-18", backbone), ("decode_head", "FCNHead", head),
                             ("auxiliary_head", "FCNHead (training only)", aux)]
    assert summary.parameters == backbone + head + aux == sum(p.numel() for p in model.parameters())
    assert summary.trainable == summary.parameters - model.backbone.stem[0].weight.numel()
    assert summary.config == "fcn_r18-d8_1xb8-600_synthetic-96x96" and summary.num_classes == 5
    text = str(summary)
    assert text.splitlines()[0] == "EncoderDecoder (fcn_r18-d8_1xb8-600_synthetic-96x96)"
    assert "classes         5: background, shape_1, shape_2, shape_3, shape_4" in text
    assert "output          5 channels: argmax" in text
    assert "inference       slide, crop 64x64, stride 48x32" in text


def test_binary_model_says_sigmoid_and_threshold() -> None:
    summary = summarize(tiny("fcn_r18-d8_1xb8-600_synthetic-binary-96x96"))
    assert summary.output == "1 channel: sigmoid > threshold 0.5 gives labels 0/1"
    assert summary.classes == ["background", "foreground"]


def test_cascade_lists_its_stages_and_a_model_without_names_gives_the_count() -> None:
    from semseg.build import build

    model = build("segmentor", dict(
        type="CascadeEncoderDecoder", num_stages=2,
        backbone=dict(type="ResNetV1c", depth=18, stem_channels=8, base_channels=4),
        decode_head=[dict(type="FCNHead", in_channels=32, channels=8, num_convs=1, num_classes=3),
                     dict(type="OCRHead", in_channels=32, channels=8, ocr_channels=8, num_classes=3)]))
    summary = summarize(model)
    assert summary.parts[1][:2] == ("decode_head", "FCNHead -> OCRHead") and len(summary.parts) == 2
    assert summary.classes is None and summary.config is None
    assert "  classes      3\n" in str(summary)


def test_notebook_view_is_the_table_with_the_module_tree_folded() -> None:
    model = tiny()
    page = summary_html(model)
    assert page.startswith("<div><b>EncoderDecoder (fcn_r18-d8_1xb8-600_synthetic-96x96)</b><table>")
    assert "<th style='text-align:left'>backbone</th>" in page and "<details><summary>module tree</summary>" in page
    assert "(conv_seg): Conv2d(8, 5, kernel_size=(1, 1)" in page  # repr(model), escaped
    assert "<table>" in ModelSummary._repr_html_(summarize(model))
    assert repr(model).startswith("EncoderDecoder(\n  (backbone): ResNetV1c(")  # print(model): the tree


def test_segmentor_exposes_summary_and_jupyter_view() -> None:
    model = tiny()
    assert str(model.summary()) == str(summarize(model))
    assert model._repr_html_() == summary_html(model)
