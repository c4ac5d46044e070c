"""OCRNet vs MMSegmentation 1.2.2: OCRHead alone (keys, eval logits, training losses and gradients, given
the previous stage's logits), and two zoo OCRNets end to end (HRNet and ResNet cascades: encode_decode, slide
inference, the four losses ``decode_0.*`` / ``decode_1.*``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from oracle import (
    _data_samples,
    assert_encode_decode_equal,
    assert_loss_equal,
    assert_slide_equal,
    calibrate_norms_,
    head_pair,
    max_diff,
    mmseg_config_dir,
    replace_syncbn,
    set_dropout_off,
    zoo_pair,
)

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "semseg" / "configs"
NUM_CLASSES = 5
HR_WIDTHS = (4, 6, 8, 10)
HR_SIZES = [(13, 17), (7, 9), (4, 5), (2, 3)]  # an HRNet's four branches on a 51x67 image
GN = dict(type="GN", num_groups=4)


def ocr_head(model_file: str, **tiny) -> dict:
    """The OCRHead (stage 1) of the oracle's ``_base_/models/<model_file>.py``, with tiny channel counts."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(mmseg_config_dir() / "_base_" / "models" / f"{model_file}.py"))
    head = replace_syncbn(cfg.model.decode_head[1].to_dict())
    assert head["type"] == "OCRHead"
    return head | dict(channels=8, ocr_channels=4, num_classes=NUM_CLASSES) | tiny


def hr(**kwargs) -> dict:
    return ocr_head("ocrnet_hr18", in_channels=list(HR_WIDTHS)) | kwargs


def r50(**kwargs) -> dict:
    return ocr_head("ocrnet_r50-d8", in_channels=12, in_index=1) | kwargs


CASES = {
    "hr": lambda: hr(),
    "hr_ac": lambda: hr(align_corners=True),
    "r50": lambda: r50(),
    "r50_ac": lambda: r50(align_corners=True),
    "r50_gn_scale_half": lambda: r50(norm_cfg=GN, scale=0.5),
}


def make_inputs(cfg: dict, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Features for the head and the previous stage's logits (2, NUM_CLASSES, 13, 17), sharply peaked."""
    gen = torch.Generator().manual_seed(seed)
    if cfg.get("input_transform") == "resize_concat":
        feats = [torch.randn(2, c, *hw, generator=gen) for c, hw in zip(HR_WIDTHS, HR_SIZES, strict=True)]
    else:
        feats = [torch.randn(2, c, *HR_SIZES[0], generator=gen) for c in (6, cfg["in_channels"])]
    return feats, 3 * torch.randn(2, NUM_CLASSES, *HR_SIZES[0], generator=gen)


@pytest.mark.parametrize("name", list(CASES))
def test_eval_logits_match_oracle(name: str) -> None:
    cfg = CASES[name]()
    oracle, ours = head_pair(cfg)
    oracle.eval()
    ours.eval()
    feats, prev = make_inputs(cfg, seed=3)
    with torch.no_grad():
        expected = oracle(feats, prev)
        got = ours(feats, prev)
    assert got.shape == expected.shape == (2, NUM_CLASSES, *HR_SIZES[0])
    assert expected.abs().max() > 1e-2
    assert max_diff(got, expected) < 1e-4


LOSS_CASES = {
    "hr": lambda: hr(),
    "hr_ac": lambda: hr(align_corners=True),
    "r50_ac_ohem": lambda: r50(align_corners=True, sampler=dict(type="OHEMPixelSampler", thresh=0.7,
                                                                min_kept=200)),
    "r50_two_losses": lambda: r50(loss_decode=[
        dict(type="CrossEntropyLoss", loss_weight=1.0),
        dict(type="CrossEntropyLoss", loss_weight=0.4, loss_name="loss_x", avg_non_ignore=True),
    ]),
}


@pytest.mark.filterwarnings("ignore:.*align_corners")  # odd sizes on purpose
@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_train_losses_and_gradients_match_oracle(name: str) -> None:
    """Train mode (batch statistics), dropout off, labels at 4x the head's size with ignored rows: same loss
    keys and values, and the same gradients w.r.t. the features and the previous logits."""
    cfg = LOSS_CASES[name]()
    oracle, ours = head_pair(cfg)
    for head in (oracle, ours):
        head.train()
        set_dropout_off(head)
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, NUM_CLASSES, (2, 51, 67), generator=gen)
    labels[:, :7] = 255
    results = []
    for head in (oracle, ours):
        feats, prev = make_inputs(cfg, seed=5)
        for t in (*feats, prev):
            t.requires_grad_(True)
        if head is oracle:
            hw = tuple(labels.shape[1:])
            samples = _data_samples(labels, [dict(img_shape=hw, ori_shape=hw)] * 2)
            losses = dict(head.loss(feats, prev, samples, train_cfg={}))
        else:
            losses = head.loss(feats, labels, prev)
        sum(v for k, v in losses.items() if k.startswith("loss")).backward()
        results.append((losses, [t.grad for t in (*feats, prev) if t.grad is not None]))
    (expected, expected_grads), (got, got_grads) = results
    assert set(got) == set(expected)
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < 1e-4, key
    assert expected_grads[-1].abs().max() > 1e-6  # the loss does reach the previous stage's logits
    assert len(got_grads) == len(expected_grads)  # the same inputs are used
    for g, e in zip(got_grads, expected_grads, strict=True):
        assert max_diff(g, e) < 1e-5


# Zoo models at reduced width (cfg-options on both sides): HRNetV2-W18-Small with ADE20K's 150 classes (150
# object regions) and ResNet-101-V1c-D8 (23 blocks in stage 3).
_NARROW = (6, 10, 14, 18)
_OCR_NARROW = {"model.decode_head.1.channels": 16, "model.decode_head.1.ocr_channels": 8}
NAMES = {
    "ocrnet_hr18s_4xb4-80k_ade20k-512x512": {
        "model.backbone.extra.stage2.num_channels": _NARROW[:2],
        "model.backbone.extra.stage3.num_channels": _NARROW[:3],
        "model.backbone.extra.stage4.num_channels": _NARROW,
        "model.decode_head.0.in_channels": list(_NARROW),
        "model.decode_head.0.channels": sum(_NARROW),
        "model.decode_head.1.in_channels": list(_NARROW),
        **_OCR_NARROW,
    },
    "ocrnet_r101-d8_4xb2-40k_cityscapes-512x1024": {
        "model.backbone.stem_channels": 16,
        "model.backbone.base_channels": 8,
        "model.decode_head.0.in_channels": 128,
        "model.decode_head.0.channels": 16,
        "model.decode_head.1.in_channels": 256,
        **_OCR_NARROW,
    },
}


@pytest.fixture(scope="module", params=list(NAMES))
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    name = request.param
    path = CONFIG_ROOT / "ocrnet" / f"{name}.py"
    oracle, ours = zoo_pair(path, tmp_path_factory.mktemp("ckpt"), NAMES[name])
    calibrate_norms_(oracle)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours


def test_zoo_encode_decode(pair):
    assert_encode_decode_equal(*pair, size=(41, 53))


def test_zoo_slide_inference(pair):
    # windows overlap unevenly and do not divide the image
    assert_slide_equal(*pair, size=(45, 61), crop=(32, 40), stride=(19, 23))


def test_zoo_loss(pair):
    losses = assert_loss_equal(*pair, size=(37, 51))
    assert set(losses) == {f"decode_{i}.{k}" for i in (0, 1) for k in ("loss_ce", "acc_seg")}
