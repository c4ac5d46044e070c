"""Whole zoo models against the oracle: weights handed over through a saved checkpoint, then logits
(whole and slide inference) and losses compared on odd-sized batch-2 inputs."""

from __future__ import annotations

import pytest
from oracle import (
    assert_encode_decode_equal,
    assert_loss_equal,
    assert_slide_equal,
    zoo_pair,
)

# Every head, every backbone variant (V1b "r50b", V1c, D8/D16, multi-grid, R-18/50/101), both Cityscapes
# crops (769x769 configs use align_corners=True), and each dataset's class count.
NAMES = [
    "fcn_r18-d8_4xb2-80k_cityscapes-512x1024",
    "fcn-d6_r50-d16_4xb2-40k_cityscapes-769x769",
    "fcn_r101-d8_4xb4-40k_pascal-context-59-480x480",
    "pspnet_r50b-d8_4xb2-80k_cityscapes-512x1024",
    "pspnet_r18-d8_4xb2-80k_cityscapes-769x769",
    "pspnet_r50-d8_4xb4-20k_coco-stuff10k-512x512",
    "pspnet_r18-d8_4xb4-80k_isaid-896x896",
    "deeplabv3_r101-d16-mg124_4xb2-40k_cityscapes-512x1024",
    "deeplabv3_r50-d8_4xb4-20k_voc12aug-512x512",
    "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-769x769",
    "deeplabv3plus_r50-d8_4xb4-80k_loveda-512x512",
    "deeplabv3plus_r101-d8_4xb4-80k_pascal-context-480x480",
    "upernet_r50_4xb2-40k_cityscapes-769x769",
    "pspnet_r101-d8_4xb4-80k_ade20k-512x512",
    "upernet_r50_4xb4-20k_voc12aug-512x512",
    # The attention heads, each once, both align_corners settings among them.
    "psanet_r50-d8_4xb2-40k_cityscapes-769x769",
    "nonlocal_r50-d8_4xb4-20k_voc12aug-512x512",
    "dnl_r50-d8_4xb2-40k_cityscapes-769x769",
    "gcnet_r50-d8_4xb4-80k_ade20k-512x512",
    "ccnet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "danet_r50-d8_4xb2-40k_cityscapes-769x769",
    "emanet_r50-d8_4xb2-80k_cityscapes-769x769",
    "ann_r50-d8_4xb4-40k_voc12aug-512x512",
]



@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
    """(oracle model, semseg model) with the same random weights and norm statistics."""
    return zoo_pair(request.param, tmp_path_factory.mktemp("ckpt"))


def test_encode_decode(pair):
    assert_encode_decode_equal(*pair)


def test_slide_inference(pair):
    # windows overlap unevenly and do not divide the image
    assert_slide_equal(*pair, size=(71, 97), crop=(48, 56), stride=(27, 31))


def test_loss(pair):
    assert_loss_equal(*pair)
