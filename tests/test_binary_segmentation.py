"""Binary segmentation as a first-class case: the synthetic binary config (``out_channels=1``, sigmoid loss,
``threshold``) trains, evaluates over two classes and predicts labels 0/1 through the threshold."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import semseg
from semseg.cli import main
from semseg.config import load_config
from semseg.data.datasets.synthetic import SyntheticDataset, generate_sample, synthetic_metainfo
from semseg.engine.testing import run_test
from semseg.engine.trainer import Trainer

CONFIG = "fcn_r18-d8_1xb8-600_synthetic-binary-96x96"
TINY = {"model.backbone.stem_channels": 8, "model.backbone.base_channels": 4,
        "model.decode_head.in_channels": 32, "model.decode_head.channels": 8,
        "model.auxiliary_head.in_channels": 16, "model.auxiliary_head.channels": 4}
RUN = {**TINY, "train_cfg.max_iters": 3, "train_cfg.val_interval": 3, "default_hooks.checkpoint.interval": 3,
       "train_dataloader.batch_size": 2, "train_dataloader.dataset.num_samples": 4,
       "val_dataloader.dataset.num_samples": 2, "default_hooks.logger.interval": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Trainer, Path]:
    torch.set_num_threads(1)
    work_dir = tmp_path_factory.mktemp("binary")
    trainer = Trainer(load_config(CONFIG, RUN), work_dir, device="cpu")
    trainer.train()
    return trainer, trainer.last_good


def test_binary_labels_are_the_shapes_of_the_multiclass_sample() -> None:
    image, labels = generate_sample(3, (37, 53), split="val")
    binary_image, binary = generate_sample(3, (37, 53), split="val", binary=True)
    assert np.array_equal(image, binary_image) and np.array_equal(binary, (labels > 0).astype(np.uint8))
    assert set(np.unique(binary)) == {0, 1}
    dataset = SyntheticDataset(num_samples=2, img_size=(37, 53), binary=True)
    assert dataset.metainfo["classes"] == ("background", "foreground") == synthetic_metainfo(binary=True)["classes"]
    assert len(dataset.metainfo["palette"]) == 2


def test_config_declares_one_sigmoid_channel_with_a_threshold() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # out_channels and threshold given: no fallback warnings
        model = semseg.init_model(load_config(CONFIG, TINY))
    for head in (model.decode_head, model.auxiliary_head):
        assert head.out_channels == 1 and head.num_classes == 2 and head.threshold == 0.5
        assert head.loss_decode.use_sigmoid and head.conv_seg.out_channels == 1
    assert model.dataset_meta["classes"] == ("background", "foreground")


def test_trains_and_evaluates_over_two_classes(trained, tmp_path: Path, capsys) -> None:
    trainer, checkpoint = trained
    scores = run_test(CONFIG, str(checkpoint), cfg_options={**TINY, "test_dataloader.dataset.num_samples": 2},
                      device="cpu", progress=False)  # the val set the trainer scored
    assert list(scores["per_class"]) == ["background", "foreground"]
    assert 0.0 <= scores["mIoU"] <= 100.0 and abs(scores["mIoU"] - trainer.last_scores["mIoU"]) < 1e-6
    table = capsys.readouterr().out
    assert "background" in table and "foreground" in table


def test_predicts_labels_through_the_threshold(trained, tmp_path: Path) -> None:
    _, checkpoint = trained
    image, _ = generate_sample(0, (45, 61), split="test", binary=True)
    model = semseg.init_model(CONFIG, str(checkpoint), cfg_options=TINY)
    result = semseg.inference_model(model, image)
    assert result.logits.shape == (1, 45, 61) and result.labels.shape == (45, 61)
    assert set(np.unique(result.labels)) <= {0, 1}
    probabilities = result.logits[0].sigmoid().numpy()
    assert np.array_equal(result.labels, (probabilities > 0.5).astype(result.labels.dtype))
    # the threshold is the decision: at the probabilities' median about half the pixels are foreground
    median = float(np.median(probabilities))
    model.decode_head.threshold = median
    moved = semseg.inference_model(model, image).labels
    assert np.array_equal(moved, (probabilities > median).astype(moved.dtype))
    assert 0 < moved.sum() < moved.size

    out = tmp_path / "pred"
    picture = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(picture), image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["predict", CONFIG, str(checkpoint), str(picture), "--out", str(out), "--cfg-options",
                     *(f"{k}={v}" for k, v in TINY.items())]) == 0
    from PIL import Image

    written = Image.open(out / "labels" / "a.png")
    assert written.mode == "P" and np.array_equal(np.asarray(written), result.labels)
