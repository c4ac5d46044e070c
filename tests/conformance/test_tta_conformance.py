"""Test-time augmentation (``--tta``) against MMSegmentation's ``SegTTAModel``: the config's ``tta_pipeline``
(scales x flips) on an odd-sized image file, each view inferred (whole or slide), restored to the image and
the views' softmax probabilities averaged; the same weights give the same probabilities and label map."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from oracle import (
    build_oracle_model,
    calibrate_norms_,
    load_oracle_config,
    randomize_,
    save_oracle_state_dict,
)

import semseg

# A plain encoder-decoder and a cascade (OCRNet on HRNet: both stages run on every view)
NAMES = ["fcn_r18-d8_4xb2-80k_cityscapes-512x1024", "ocrnet_hr18s_4xb2-40k_cityscapes-512x1024"]
RATIOS = (0.5, 0.75, 1.0)  # the config's six scales cut to three: 49x66, 73x98, 97x131 views
RESIZES = [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in RATIOS]
SLIDE = dict(mode="slide", crop_size=(48, 64), stride=(32, 41))  # crops that do not divide any view
TOL = 1e-4


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    """A 97x131 PNG, left-right asymmetric (so a flip not undone would show), channels differing."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:97, 0:131]
    base = np.stack([yy * 2.5, xx * 1.9, 255 - 0.5 * xx - yy], axis=-1)
    image = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "image.png"
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="module", params=NAMES)
def setup(request, tmp_path_factory):
    """(oracle model, oracle config with the three-scale tta_pipeline, checkpoint path, name); random
    weights."""
    name = request.param
    cfg = load_oracle_config(name)
    tta = cfg.tta_pipeline[1]
    assert tta["type"] == "TestTimeAug" and tta["transforms"][0][0]["type"] == "Resize"
    tta["transforms"][0] = copy.deepcopy(RESIZES)
    oracle = randomize_(build_oracle_model(cfg.model, seed=4), seed=5)
    output_head = oracle.decode_head
    if isinstance(output_head, torch.nn.ModuleList):  # a cascade: keep its deep HRNet's features O(1)
        output_head = calibrate_norms_(oracle).decode_head[-1]
    with torch.no_grad():  # spread the logits so probabilities are far from uniform, no class favoured
        output_head.conv_seg.weight.mul_(30)
        output_head.conv_seg.bias.zero_()
    path = save_oracle_state_dict(oracle, tmp_path_factory.mktemp("ckpt") / f"{name}.pth")
    return oracle, cfg, path, name


def _oracle_tta(oracle, cfg, image_file: Path, test_cfg: dict | None) -> tuple[np.ndarray, torch.Tensor, int]:
    """Run SegTTAModel.test_step as mmseg's TTA test loop feeds it; returns (labels (H, W), the averaged
    softmax of the views' restored logits (C, H, W), number of views)."""
    from mmengine.config import ConfigDict
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.models import SegTTAModel

    init_default_scope("mmseg")
    steps = copy.deepcopy(cfg.tta_pipeline)  # no label file: drop LoadAnnotations, as inference does
    steps[1]["transforms"] = [group for group in steps[1]["transforms"] if group[0]["type"] != "LoadAnnotations"]
    data = pseudo_collate([Compose(steps)(dict(img_path=str(image_file)))])  # {key: [[view] per view]}

    tta_model = SegTTAModel(module=oracle)
    seen = []
    merge = tta_model.merge_preds
    tta_model.merge_preds = lambda samples_list: (seen.extend(samples_list[0]), merge(samples_list))[1]
    saved = oracle.test_cfg
    oracle.test_cfg = ConfigDict(test_cfg or saved)
    try:
        with torch.no_grad():
            merged = tta_model.test_step(data)
    finally:
        oracle.test_cfg = saved
    # SegTTAModel keeps only the label map of the average; the views' restored logits give the probabilities.
    probs = torch.stack([sample.seg_logits.data.softmax(dim=0) for sample in seen]).mean(dim=0)
    return merged[0].pred_sem_seg.data[0].numpy(), probs, len(seen)


def _ours(name: str, path: Path, image_file: Path, test_cfg: dict | None) -> semseg.SegResult:
    options: dict = {"tta_pipeline.1.transforms.0": copy.deepcopy(RESIZES)}
    if test_cfg is not None:
        options["model.test_cfg"] = dict(test_cfg, _delete_=True)
    model = semseg.init_model(name, checkpoint=path, cfg_options=options)
    return semseg.inference_model(model, image_file, tta=True)


@pytest.mark.parametrize("test_cfg", [None, SLIDE], ids=["whole", "slide"])
def test_tta_matches_oracle(setup, image_file: Path, test_cfg: dict | None) -> None:
    oracle, cfg, path, name = setup
    labels, probs, views = _oracle_tta(oracle, cfg, image_file, test_cfg)
    assert views == 2 * len(RATIOS)
    assert (probs.argmax(dim=0).numpy() == labels).all()  # the probabilities are those SegTTAModel averaged
    # the probabilities vary over the image (a flip or a view put back at the wrong place would show)
    assert probs.std(dim=(1, 2)).max() > 0.05, probs.std(dim=(1, 2)).max()

    result = _ours(name, path, image_file, test_cfg)
    assert result.logits.shape == probs.shape == (19, 97, 131)
    assert torch.allclose(result.logits.sum(dim=0), torch.ones(97, 131), atol=1e-5)
    assert (result.logits - probs).abs().max() < TOL
    mismatch = result.labels != labels
    if mismatch.any():  # only where the two most probable classes tie within the tolerance
        top2 = probs.topk(2, dim=0).values
        assert ((top2[0] - top2[1]).numpy()[mismatch] < TOL).all()


def test_tta_differs_from_single_view(setup, image_file: Path) -> None:
    """The comparison sees the augmentation: plain inference gives other scores than the TTA average."""
    _, _, path, name = setup
    tta = _ours(name, path, image_file, None)
    model = semseg.init_model(name, checkpoint=path)
    single = semseg.inference_model(model, image_file)
    assert (single.logits.softmax(dim=0) - tta.logits).abs().max() > 1e-2
