"""The segmentor seam: heads report named losses, the segmentor prefixes them, and a subclass can replace
decoding (a cascade) without copying inference."""

from __future__ import annotations

import torch
from torch import nn

from semseg.build import build
from semseg.models.heads.fcn import FCNHead
from semseg.models.losses import head_losses
from semseg.models.segmentor import EncoderDecoder

BACKBONE = dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8, out_indices=(2, 3),
                strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))


def head(**kwargs) -> dict:
    return {**dict(type="FCNHead", in_channels=64, channels=8, num_convs=1, num_classes=3, in_index=1,
                   dropout_ratio=0.0), **kwargs}


def segmentor(**kwargs) -> EncoderDecoder:
    torch.manual_seed(0)
    return build("segmentor", dict(type="EncoderDecoder", backbone=BACKBONE, **kwargs))


class TwoOutputHead(FCNHead):
    """A head that trains on its logits and on a second classifier's (as DANet does)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.extra_seg = nn.Conv2d(self.channels, self.out_channels, 1)

    def loss(self, inputs, labels):
        features = self.forward_features(inputs)
        losses = {f"main.{k}": v for k, v in head_losses(self, self.cls_seg(features), labels).items()}
        losses.update({f"extra.{k}": v for k, v in head_losses(self, self.extra_seg(features), labels).items()})
        return losses


def test_loss_keys_are_prefixed_per_head() -> None:
    model = segmentor(decode_head=head(), auxiliary_head=[head(in_index=0, in_channels=32), head()])
    x, labels = torch.randn(2, 3, 33, 41), torch.randint(0, 3, (2, 33, 41))
    losses = model.loss(x, labels)
    assert set(losses) == {f"{p}.{k}" for p in ("decode", "aux_0", "aux_1") for k in ("loss_ce", "acc_seg")}
    expected = head_losses(model.decode_head, model.decode_head(model.extract_feat(x)), labels)
    assert torch.allclose(losses["decode.loss_ce"], expected["loss_ce"])


def test_a_head_with_several_outputs_reports_each() -> None:
    model = segmentor(decode_head=head(), auxiliary_head=head(in_index=0, in_channels=32))
    model.decode_head = TwoOutputHead(**{k: v for k, v in head().items() if k != "type"})
    losses = model.loss(torch.randn(2, 3, 33, 41), torch.randint(0, 3, (2, 33, 41)))
    assert set(losses) == {"decode.main.loss_ce", "decode.main.acc_seg", "decode.extra.loss_ce",
                           "decode.extra.acc_seg", "aux.loss_ce", "aux.acc_seg"}
    assert not torch.allclose(losses["decode.main.loss_ce"], losses["decode.extra.loss_ce"])


class TwoStage(EncoderDecoder):
    """A cascade in a few lines: the second head refines the first's logits; inference is inherited."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.refine = nn.Conv2d(3, 4, 1)

    @property
    def output_head(self) -> nn.Module:
        return self.refine

    def decode(self, features):
        return self.refine(self.decode_head(features))

    def decode_losses(self, features, labels):
        return {"decode_0.loss_ce": self.decode_head.loss(features, labels)["loss_ce"]}


def test_a_subclass_replaces_decoding_and_keeps_inference() -> None:
    model = segmentor(decode_head=head())
    cascade = TwoStage(backbone=BACKBONE, decode_head=head())
    cascade.load_state_dict({**model.state_dict(), **cascade.refine.state_dict(prefix="refine.")})
    cascade.refine.num_classes, cascade.refine.out_channels = 4, 4
    cascade.refine.align_corners, cascade.refine.ignore_index = False, 255
    cascade.eval()
    x = torch.randn(2, 3, 33, 41)
    with torch.no_grad():
        logits = cascade.encode_decode(x)
        cascade.test_cfg = dict(mode="slide", crop_size=(24, 24), stride=(16, 16))
        slid = cascade.inference(x)
    assert logits.shape == slid.shape == (2, 4, 33, 41)
    assert cascade.num_classes == 4 and cascade.ignore_index == 255
    assert set(cascade.loss(x, torch.randint(0, 3, (2, 33, 41)))) == {"decode_0.loss_ce"}


def test_segmentor_properties_come_from_the_output_head() -> None:
    model = segmentor(decode_head=head(ignore_index=7, align_corners=True))
    assert (model.num_classes, model.out_channels, model.ignore_index, model.align_corners) == (3, 3, 7, True)
