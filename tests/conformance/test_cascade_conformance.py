"""CascadeEncoderDecoder vs MMSegmentation 1.2.2 with three stages (FCN, then two OCR refinements; the zoo
has two): keys, encode_decode, slide inference, the ``decode_<i>`` losses, and the BatchNorm statistics a
training forward leaves (stage 0 runs twice per loss, as in the oracle)."""

from __future__ import annotations

from oracle import (
    assert_encode_decode_equal,
    assert_loss_equal,
    assert_slide_equal,
    build_oracle_model,
    calibrate_norms_,
    max_diff,
    randomize_,
    save_oracle_state_dict,
)

import semseg
from semseg.build import build

BN = dict(type="BN", requires_grad=True)
OCR = dict(type="OCRHead", in_channels=64, in_index=1, channels=8, ocr_channels=4, num_classes=3,
           dropout_ratio=0.0, norm_cfg=BN, align_corners=False)
MODEL = dict(
    type="CascadeEncoderDecoder",
    num_stages=3,
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    backbone=dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8, out_indices=(2, 3),
                  strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), norm_cfg=BN),
    decode_head=[
        dict(type="FCNHead", in_channels=32, in_index=0, channels=8, num_convs=1, concat_input=False,
             num_classes=3, dropout_ratio=0.0, norm_cfg=BN, align_corners=False,
             loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
        OCR,
        OCR,
    ],
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)


def pair(tmp_path):
    # statistics near the real ones keep the logits O(1): with randomize_'s alone they reach ~50 and the
    # object attention's float32 rounding alone approaches 1e-4
    oracle = calibrate_norms_(randomize_(build_oracle_model(MODEL, seed=1), seed=2))
    ours = build("segmentor", MODEL)
    semseg.load_checkpoint(ours, save_oracle_state_dict(oracle, tmp_path / "cascade.pth"), strict=True)
    assert set(ours.state_dict()) == set(oracle.state_dict())
    return oracle, ours.eval()


def test_three_stage_cascade_matches_the_oracle(tmp_path) -> None:
    oracle, ours = pair(tmp_path)
    assert_encode_decode_equal(oracle, ours)
    assert_slide_equal(oracle, ours)
    losses = assert_loss_equal(oracle, ours)
    assert {key.split(".")[0] for key in losses} == {"decode_0", "decode_1", "decode_2"}


def test_a_training_loss_moves_batchnorm_statistics_as_the_oracle(tmp_path) -> None:
    oracle, ours = pair(tmp_path)
    assert_loss_equal(oracle, ours)
    theirs = oracle.state_dict()
    for key, value in ours.state_dict().items():
        if "running_" in key or "num_batches_tracked" in key:
            assert max_diff(value.float(), theirs[key].float()) < 1e-5, key
    assert int(ours.state_dict()["decode_head.0.convs.0.bn.num_batches_tracked"]) == 2
