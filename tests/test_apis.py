"""High-level API: init_model (zoo name, cfg_options, strict checkpoints), inference_model, show_result,
list_models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import semseg

NAME = "fcn_r18-d8_4xb2-80k_cityscapes-512x1024"  # the smallest zoo model
SMALL = {"test_pipeline.1.scale": (160, 80), "test_dataloader.dataset.pipeline.1.scale": (160, 80)}  # keep the test pipeline's Resize small


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = semseg.init_model(NAME, cfg_options=SMALL)
    with torch.no_grad():  # logits far apart, so the label map does not hinge on rounding
        model.decode_head.conv_seg.weight.mul_(100)
    return model


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    """A 97x131 BGR PNG: a smooth gradient with noise (odd size, not a multiple of the network's stride)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:97, 0:131]
    base = np.stack([yy * 2, xx * 1.5, (yy + xx) % 256], axis=-1)
    image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "image.png"
    assert cv2.imwrite(str(path), image)
    return path


def test_init_model_zoo_name_and_cfg_options() -> None:
    model = semseg.init_model(NAME, cfg_options={"model.decode_head.num_classes": 7,
                                                 "model.test_cfg.mode": "slide",
                                                 "model.test_cfg.crop_size": (64, 64),
                                                 "model.test_cfg.stride": (48, 48)})
    assert not model.training
    assert model.decode_head.conv_seg.out_channels == 7 and model.num_classes == 7
    assert model.test_cfg == {"mode": "slide", "crop_size": (64, 64), "stride": (48, 48)}
    assert model.cfg.model.decode_head.num_classes == 7
    assert type(model.backbone).__name__ == "ResNetV1c" and model.backbone.depth == 18
    assert next(model.parameters()).device.type == "cpu"


def test_init_model_from_config_path_and_options_list(tmp_path: Path) -> None:
    config = semseg.load_config(NAME)
    path = tmp_path / "my_fcn.py"
    config.dump(path)
    model = semseg.init_model(path, cfg_options=["model.decode_head.num_classes=4"])
    assert model.decode_head.conv_seg.out_channels == 4


def test_unknown_zoo_name_suggests() -> None:
    with pytest.raises(Exception, match="fcn_r18-d8_4xb2-80k_cityscapes-512x1024"):
        semseg.init_model("fcn_r18-d8_4xb2-80k_cityscape-512x1024")


def test_checkpoint_round_trip_and_strict_missing_key(model: torch.nn.Module, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    full = tmp_path / "full.pth"
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": [f"c{i}" for i in range(19)]}}}, full)
    loaded = semseg.init_model(NAME, checkpoint=full)
    assert torch.equal(loaded.decode_head.conv_seg.weight, model.decode_head.conv_seg.weight)
    assert loaded.dataset_meta["classes"][3] == "c3"

    del state["decode_head.conv_seg.bias"]
    broken = tmp_path / "broken.pth"
    torch.save({"state_dict": state, "meta": {}}, broken)
    with pytest.raises(RuntimeError, match=r"decode_head\.conv_seg\.bias"):
        semseg.init_model(NAME, checkpoint=broken)
    with pytest.warns(UserWarning, match=r"missing keys \(1\): decode_head\.conv_seg\.bias"):
        relaxed = semseg.init_model(NAME, checkpoint=broken, strict=False)
    assert torch.equal(relaxed.decode_head.conv_seg.weight, model.decode_head.conv_seg.weight)


def test_inference_model_path_and_array_agree(model: torch.nn.Module, image_file: Path) -> None:
    from_path = semseg.inference_model(model, image_file)
    from_array = semseg.inference_model(model, cv2.imread(str(image_file)))
    assert from_path.labels.shape == (97, 131) and from_path.labels.dtype == np.int64
    assert from_path.logits.shape == (19, 97, 131)
    assert np.array_equal(from_path.labels, from_array.labels)
    assert torch.equal(from_path.logits, from_array.logits)
    assert np.array_equal(from_path.labels, from_path.logits.argmax(0).numpy())
    assert len(np.unique(from_path.labels)) > 1  # not a constant prediction


def test_inference_model_runs_the_configured_pipeline(model: torch.nn.Module, image_file: Path) -> None:
    # by hand: cv2 resize to fit 160x80 (131x97 -> 108x80), RGB, normalize, whole inference, resize back
    image = cv2.imread(str(image_file))
    resized = cv2.resize(image, (108, 80), interpolation=cv2.INTER_LINEAR)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    x = ((torch.from_numpy(resized[..., ::-1].copy()).permute(2, 0, 1).float() - mean) / std)[None]
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model.inference(x), (97, 131), mode="bilinear")
    result = semseg.inference_model(model, image_file)
    assert (result.logits - logits[0]).abs().max() < 1e-4


def test_inference_model_tta_gives_probabilities(model: torch.nn.Module, image_file: Path) -> None:
    result = semseg.inference_model(model, image_file, tta=True)  # the config's 6 scales x 2 flips
    assert result.labels.shape == (97, 131)
    assert torch.allclose(result.logits.sum(0), torch.ones(97, 131), atol=1e-4)
    assert np.array_equal(result.labels, result.logits.argmax(0).numpy())
    plain = semseg.inference_model(model, image_file)
    assert not torch.allclose(result.logits, plain.logits.softmax(0), atol=1e-3)  # the views did something


def test_inference_model_missing_file_names_it(model: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        semseg.inference_model(model, tmp_path / "nope.png")


def test_show_result_writes_blended_image(image_file: Path, tmp_path: Path) -> None:
    labels = np.zeros((97, 131), dtype=np.int64)
    labels[:, 60:] = 2
    out = tmp_path / "vis" / "out.png"
    blended = semseg.show_result(image_file, labels, opacity=0.5, out_file=out)
    written = cv2.imread(str(out))
    assert written is not None and written.shape == (97, 131, 3)
    assert np.array_equal(written, blended)
    image = cv2.imread(str(image_file))
    assert not np.array_equal(blended, image)
    palette = np.array([[0, 0, 0], [0, 0, 0], [255, 255, 255]], dtype=np.uint8)
    white = semseg.show_result(image, labels, palette=palette, opacity=1.0)
    assert (white[:, 60:] == 255).all() and (white[:, :60] == 0).all()


def test_list_models() -> None:
    names = semseg.list_models("deeplabv3plus*")
    assert names and names == sorted(names)
    assert all(name.startswith("deeplabv3plus") for name in names)
    assert NAME in semseg.list_models("fcn_*")
    assert semseg.list_models("no-such-model*") == []
