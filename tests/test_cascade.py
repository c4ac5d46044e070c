"""CascadeEncoderDecoder: stages refine the previous stage's logits; keys and loss names as MMSegmentation's."""

from __future__ import annotations

import pytest
import torch

from semseg.build import HEADS, build
from semseg.models.heads.fcn import FCNHead
from semseg.models.losses import head_losses

BACKBONE = dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8, out_indices=(2, 3),
                strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))


class RefineHead(FCNHead):
    """A stage >= 1 head: FCN features plus the previous stage's logits, concatenated."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mix = torch.nn.Conv2d(self.channels + self.num_classes, self.channels, 1)
        self.calls = 0

    def forward(self, inputs, prev_logits):
        self.calls += 1
        features = self.forward_features(inputs)
        return self.cls_seg(self.mix(torch.cat([features, prev_logits], dim=1)))

    def loss(self, inputs, labels, prev_logits):
        return head_losses(self, self(inputs, prev_logits), labels)


def fcn(**kwargs) -> dict:
    return {**dict(type="FCNHead", in_channels=64, channels=8, num_convs=1, num_classes=3, in_index=1,
                   dropout_ratio=0.0), **kwargs}


@pytest.fixture
def cascade(monkeypatch):
    monkeypatch.setitem(HEADS, "RefineHead", f"{__name__}:RefineHead")
    torch.manual_seed(0)
    return build("segmentor", dict(type="CascadeEncoderDecoder", num_stages=3, backbone=BACKBONE,
                                   decode_head=[fcn(), fcn(type="RefineHead"), fcn(type="RefineHead")],
                                   auxiliary_head=fcn(in_index=0, in_channels=32),
                                   train_cfg=dict(a=1), test_cfg=dict(mode="whole")))


def test_stages_chain_and_the_last_one_is_the_output(cascade) -> None:
    assert [key.split(".")[1] for key in cascade.state_dict() if key.startswith("decode_head.")][0] == "0"
    x = torch.randn(2, 3, 33, 41)
    features = cascade.extract_feat(x)
    heads = cascade.decode_head
    expected = heads[2](features, heads[1](features, heads[0](features)))
    assert torch.equal(cascade.decode(features), expected)
    assert cascade.output_head is heads[2] and cascade.num_classes == 3
    logits = cascade.inference(x)
    assert logits.shape == (2, 3, 33, 41)
    cascade.test_cfg.update(mode="slide", crop_size=(24, 24), stride=(16, 16))
    assert cascade.inference(x).shape == (2, 3, 33, 41)


def test_losses_per_stage_as_mmsegmentation_names_them(cascade) -> None:
    x, labels = torch.randn(2, 3, 33, 41), torch.randint(0, 3, (2, 33, 41))
    calls_before = [head.calls for head in cascade.decode_head[1:]]
    losses = cascade.loss(x, labels)
    assert set(losses) == {f"{p}.{k}" for p in ("decode_0", "decode_1", "decode_2", "aux")
                           for k in ("loss_ce", "acc_seg")}
    # stage 1 runs once for its loss and once for the logits stage 2 refines; the last stage once
    assert [head.calls - before for head, before in zip(cascade.decode_head[1:], calls_before, strict=True)] == [2, 1]
    cascade.eval()
    features = cascade.extract_feat(x)
    stage0 = cascade.decode_head[0](features)
    expected = head_losses(cascade.decode_head[1], cascade.decode_head[1](features, stage0), labels)
    assert torch.allclose(cascade.loss(x, labels)["decode_1.loss_ce"], expected["loss_ce"])


def test_heads_share_the_segmentor_cfgs(cascade) -> None:
    for head in [*cascade.decode_head, cascade.auxiliary_head]:
        assert head.train_cfg is cascade.train_cfg and head.test_cfg is cascade.test_cfg
    cascade.test_cfg = dict(mode="slide", crop_size=(8, 8), stride=(4, 4))
    assert all(head.test_cfg is cascade.test_cfg for head in cascade.decode_head)


def test_decode_head_must_be_a_list_of_num_stages() -> None:
    with pytest.raises(ValueError, match="num_stages=2 head dicts, got 1 dicts"):
        build("segmentor", dict(type="CascadeEncoderDecoder", num_stages=2, backbone=BACKBONE,
                                decode_head=[fcn()]))
    with pytest.raises(ValueError, match="got dict"):
        build("segmentor", dict(type="CascadeEncoderDecoder", num_stages=1, backbone=BACKBONE, decode_head=fcn()))


def test_flops_count_every_stage_under_decode_head(cascade) -> None:
    from semseg.flops import model_complexity

    complexity = model_complexity(cascade, torch.randn(1, 3, 32, 32))
    assert complexity.by_module["decode_head"] > 0
    assert complexity.by_module["backbone"] + complexity.by_module["decode_head"] == complexity.flops
