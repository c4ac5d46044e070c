"""The conformance harness itself: the mmcv._ext stand-in, the PSAMask stand-in, oracle building and running."""

import gzip
import json
import sys
from pathlib import Path

import pytest
import torch
from oracle import (
    build_oracle_model,
    oracle_encode_decode,
    oracle_inference,
    oracle_loss,
    oracle_slide_inference,
    randomize_,
    replace_syncbn,
    save_oracle_state_dict,
    strip_pretrained,
)

from semseg.zoo import manifest, methods

FIXTURE = Path(__file__).parent / "fixtures" / "oracle_keys.json.gz"

NORM = dict(type="SyncBN", requires_grad=True)
TINY_FCN = dict(
    type="EncoderDecoder",
    pretrained="open-mmlab://resnet18_v1c",
    backbone=dict(type="ResNetV1c", depth=18, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                  strides=(1, 2, 1, 1), norm_cfg=NORM, norm_eval=False, style="pytorch", contract_dilation=True),
    decode_head=dict(type="FCNHead", in_channels=512, in_index=3, channels=32, num_convs=2, concat_input=True,
                     dropout_ratio=0.1, num_classes=5, norm_cfg=NORM, align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type="FCNHead", in_channels=256, in_index=2, channels=16, num_convs=1,
                        concat_input=False, dropout_ratio=0.1, num_classes=5, norm_cfg=NORM, align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)


def _psamask_pairs(h: int, w: int, hm: int, wm: int, collect: bool):
    """Yield (input index (c, i, j), output index (k, p, q)) straight from PSAMask's definition."""
    half_h, half_w = (hm - 1) // 2, (wm - 1) // 2
    for i in range(h):
        for j in range(w):
            for a in range(hm):
                for b in range(wm):
                    p, q = i + a - half_h, j + b - half_w
                    if 0 <= p < h and 0 <= q < w:
                        yield (a * wm + b, i, j), ((p * w + q, i, j) if collect else (i * w + j, p, q))


def test_stub_lets_mmseg_models_import():
    import mmseg.models  # noqa: F401
    from mmcv.utils import ext_loader
    from mmseg.registry import MODELS

    assert "mmcv._ext" in sys.modules
    assert MODELS.get("EncoderDecoder") is not None and MODELS.get("PSAHead") is not None
    ext = ext_loader.load_ext("_ext", ["nms", "psamask_forward"])
    with pytest.raises(NotImplementedError, match="nms"):
        ext.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
@pytest.mark.parametrize("mask", [(7, 9), (3, 5)])
def test_psamask_stand_in_matches_definition(psa_type, mask):
    from mmcv.ops import PSAMask

    n, h, w = 2, 4, 5
    hm, wm = mask
    x = torch.randn(n, hm * wm, h, w, dtype=torch.float64, requires_grad=True)
    out = PSAMask(psa_type, mask)(x)
    g = torch.randn(n, h * w, h, w, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * g).sum(), x)

    want_out = torch.zeros(n, h * w, h, w, dtype=torch.float64)
    want_grad = torch.zeros_like(x)
    for src, dst in _psamask_pairs(h, w, hm, wm, psa_type == "collect"):
        want_out[(slice(None), *dst)] = x.detach()[(slice(None), *src)]
        want_grad[(slice(None), *src)] = g[(slice(None), *dst)]
    assert out.shape == (n, h * w, h, w)
    assert torch.equal(out.detach(), want_out)
    assert torch.equal(grad, want_grad)
    assert (want_out != 0).any()


def test_config_surgery():
    cfg = strip_pretrained(replace_syncbn(dict(
        TINY_FCN, backbone=dict(TINY_FCN["backbone"], init_cfg=dict(type="Pretrained", checkpoint="x.pth")),
        neck=dict(init_cfg=[dict(type="Pretrained", checkpoint="y"), dict(type="Kaiming", layer="Conv2d")]))))
    assert cfg["pretrained"] is None and cfg["backbone"]["init_cfg"] is None
    assert cfg["neck"]["init_cfg"] == [dict(type="Kaiming", layer="Conv2d")]
    assert cfg["backbone"]["norm_cfg"]["type"] == "BN" and cfg["decode_head"]["norm_cfg"]["type"] == "BN"
    assert TINY_FCN["backbone"]["norm_cfg"]["type"] == "SyncBN"  # the input is left as it was


def test_tiny_fcn_builds_randomizes_and_runs(tmp_path):
    model = build_oracle_model(TINY_FCN)
    assert not model.training
    assert type(model.backbone.stem[1]) is torch.nn.BatchNorm2d  # SyncBN replaced
    randomize_(model, seed=1)
    bn = model.decode_head.convs[0].bn
    assert bn.running_var.min() >= 0.5 and bn.running_var.max() <= 1.5 and bn.running_mean.abs().sum() > 0

    x = torch.randn(1, 3, 33, 45)
    logits = oracle_encode_decode(model, x)
    assert logits.shape == (1, 5, 33, 45) and torch.isfinite(logits).all()
    assert torch.allclose(oracle_inference(model, x), logits)

    slide = oracle_slide_inference(model, x, crop=(24, 24), stride=(16, 16))
    assert slide.shape == (1, 5, 33, 45)
    assert not torch.allclose(slide, logits)  # windows see less context than the whole image
    assert model.test_cfg.mode == "whole"  # the override was for that call only

    labels = torch.randint(0, 5, (1, 33, 45))
    labels[0, :3] = 255
    losses = oracle_loss(model, x, labels)
    assert {"decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "aux.acc_seg"} <= set(losses)
    assert losses["decode.loss_ce"].item() > 0

    path = save_oracle_state_dict(model, tmp_path / "oracle.pth")
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "meta"}
    assert torch.equal(ckpt["state_dict"]["decode_head.convs.0.bn.running_var"], bn.running_var)


def test_build_is_seeded():
    a = build_oracle_model(TINY_FCN, seed=3).state_dict()
    b = build_oracle_model(TINY_FCN, seed=3).state_dict()
    c = build_oracle_model(TINY_FCN, seed=4).state_dict()
    key = "backbone.layer1.0.conv1.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_key_fixture():
    data = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    names, models = data["names"], data["models"]
    assert len(names) >= 190 and not data["failed"]
    assert sorted(data["methods"]) == methods() and set(manifest()) <= set(names)
    assert set(names.values()) == set(models)
    psp = models[names["pspnet_r50-d8_4xb2-40k_cityscapes-512x1024"]]
    assert psp["decode_head.conv_seg.weight"] == [19, 512, 1, 1]
    assert psp["backbone.stem.0.weight"] == [32, 3, 3, 3]
    assert psp["auxiliary_head.convs.0.bn.num_batches_tracked"] == []
