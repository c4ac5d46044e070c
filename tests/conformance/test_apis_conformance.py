"""``semseg.inference_model`` against ``mmseg.apis.inference_model`` on an image file: the same test pipeline
(cv2 resize with keep_ratio rounding, BGR->RGB, normalization), inference and resizing back."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from oracle import build_oracle_model, load_oracle_config, randomize_, save_oracle_state_dict

import semseg

NAME = "fcn_r18-d8_4xb2-80k_cityscapes-512x1024"
RESIZE = 1  # the test pipeline's index of Resize: LoadImageFromFile, Resize, LoadAnnotations, PackSegInputs
SCALE = (160, 80)  # 131x97 -> 108x80: a non-integer factor, rounded half up
TOL = 1e-4


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    """A 97x131 PNG whose three channels differ, so a missing BGR->RGB swap would show."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:97, 0:131]
    base = np.stack([yy * 2.5, xx * 1.9, 255 - xx - yy], axis=-1)
    image = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "image.png"
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(oracle model, its mmengine Config, semseg model); the models have the same random weights."""
    cfg = load_oracle_config(NAME)
    assert cfg.test_pipeline[RESIZE]["type"] == "Resize"
    assert cfg.test_dataloader.dataset.pipeline[RESIZE]["type"] == "Resize"
    cfg.test_pipeline[RESIZE]["scale"] = SCALE  # what mmseg.apis.inference_model reads
    cfg.test_dataloader.dataset.pipeline[RESIZE]["scale"] = SCALE
    oracle = randomize_(build_oracle_model(cfg.model, seed=1), seed=2)
    with torch.no_grad():  # spread the logits so the label maps are decided by clear margins
        oracle.decode_head.conv_seg.weight.mul_(30)
    path = save_oracle_state_dict(oracle, tmp_path_factory.mktemp("ckpt") / f"{NAME}.pth")
    ours = semseg.init_model(NAME, checkpoint=path,
                             cfg_options={f"test_pipeline.{RESIZE}.scale": SCALE,
                                          f"test_dataloader.dataset.pipeline.{RESIZE}.scale": SCALE})
    return oracle, cfg, ours


def _oracle_result(oracle, cfg, image) -> tuple[np.ndarray, torch.Tensor]:
    from mmseg.apis import inference_model

    oracle.cfg = copy.deepcopy(cfg)  # inference_model edits cfg.test_pipeline in place (NDArray loading)
    sample = inference_model(oracle, image)
    return sample.pred_sem_seg.data[0].numpy(), sample.seg_logits.data


def _compare(oracle_labels: np.ndarray, oracle_logits: torch.Tensor, result: semseg.SegResult) -> None:
    assert result.logits.shape == oracle_logits.shape == (19, 97, 131)
    assert oracle_logits.std() > 0.1 and len(np.unique(oracle_labels)) > 2
    assert (result.logits - oracle_logits).abs().max() < TOL
    assert result.labels.shape == oracle_labels.shape
    mismatch = result.labels != oracle_labels
    if mismatch.any():  # only where the two best classes tie within the tolerance
        top2 = oracle_logits.topk(2, dim=0).values
        margin = (top2[0] - top2[1]).numpy()
        assert (margin[mismatch] < TOL).all()


def test_inference_model_on_file_matches_oracle(models, image_file: Path) -> None:
    oracle, cfg, ours = models
    labels, logits = _oracle_result(oracle, cfg, str(image_file))
    _compare(labels, logits, semseg.inference_model(ours, image_file))


def test_inference_model_on_array_matches_oracle(models, image_file: Path) -> None:
    oracle, cfg, ours = models
    image = cv2.imread(str(image_file))
    labels, logits = _oracle_result(oracle, cfg, image)
    _compare(labels, logits, semseg.inference_model(ours, image))


def test_pipeline_resize_matters(models, image_file: Path) -> None:
    """The comparison sees the pipeline: another Resize scale changes the oracle's output."""
    oracle, cfg, ours = models
    _, logits = _oracle_result(oracle, cfg, str(image_file))
    default = semseg.init_model(NAME)
    default.load_state_dict(ours.state_dict())
    other = semseg.inference_model(default, image_file)  # the config's own 2048x1024 scale
    assert (other.logits - logits).abs().max() > 1e-2
