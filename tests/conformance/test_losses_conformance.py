"""Losses, accuracy, OHEM sampling and a decode head's loss dict against MMSegmentation 1.2.2."""

from __future__ import annotations

import pytest
import torch
from oracle import build_oracle_model, install_ext_stub, randomize_

from semseg.build import build
from semseg.models.losses import CrossEntropyLoss, accuracy, head_losses
from semseg.models.sampler import OHEMPixelSampler

install_ext_stub()

IGNORE = 255
TOL = 1e-4


def _data(channels: int = 5, num_classes: int | None = None, seed: int = 0, ignored: bool = True):
    """logits (2, C, 11, 13) and labels (2, 11, 13), with ignored pixels unless ``ignored`` is False."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, 11, 13, generator=gen) * 2
    labels = torch.randint(0, num_classes or channels, (2, 11, 13), generator=gen)
    if ignored:
        labels[:, :2] = IGNORE
        labels[1, 5, 6] = IGNORE
    return logits, labels


def _oracle_loss(**kwargs):
    from mmseg.models.losses import CrossEntropyLoss as OracleCE

    return OracleCE(**kwargs)


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert expected.abs().max() > 1e-2  # a value that could be wrong
    assert (got - expected).abs().max() < TOL, (got, expected)


# class_weight runs on labels without ignored pixels: MMSegmentation 1.2.2 indexes the class weights with
# every label, 255 included, and raises an IndexError there (semseg's choice is tested in test_losses.py).
CASES = {
    "default": (dict(), {}),
    "class_weight": (dict(class_weight=[0.5, 1.0, 2.0, 3.0, 0.25]), dict(ignored=False)),
    "class_weight_non_ignore": (dict(class_weight=[0.5, 1.0, 2.0, 3.0, 0.25], avg_non_ignore=True),
                                dict(ignored=False)),
    "avg_non_ignore": (dict(avg_non_ignore=True), {}),
    "loss_weight": (dict(loss_weight=0.4), {}),
    "sigmoid_binary": (dict(use_sigmoid=True), dict(channels=1, num_classes=2)),
    "sigmoid_binary_non_ignore": (dict(use_sigmoid=True, avg_non_ignore=True), dict(channels=1, num_classes=2)),
    "sigmoid_multi": (dict(use_sigmoid=True), {}),
    "sigmoid_multi_non_ignore": (dict(use_sigmoid=True, avg_non_ignore=True, loss_weight=2.0), {}),
    "sum": (dict(reduction="sum"), {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("override", [None, "none"])
def test_cross_entropy_loss(case: str, override: str | None) -> None:
    kwargs, data_kwargs = CASES[case]
    logits, labels = _data(**data_kwargs)
    expected = _oracle_loss(**kwargs)(logits, labels, ignore_index=IGNORE, reduction_override=override)
    got = CrossEntropyLoss(**kwargs)(logits, labels, ignore_index=IGNORE, reduction_override=override)
    _close(got, expected)


def test_pixel_weight() -> None:
    logits, labels = _data(seed=1)
    weight = torch.rand(labels.shape, generator=torch.Generator().manual_seed(5))
    for kwargs in (dict(), dict(use_sigmoid=True), dict(avg_non_ignore=True)):
        expected = _oracle_loss(**kwargs)(logits, labels, weight=weight, ignore_index=IGNORE)
        got = CrossEntropyLoss(**kwargs)(logits, labels, weight=weight, ignore_index=IGNORE)
        _close(got, expected)


def test_accuracy() -> None:
    from mmseg.models.losses import accuracy as oracle_accuracy

    logits, labels = _data(seed=2)
    labels[0, 3:6] = logits[0].argmax(0)[3:6]  # some right answers beyond chance
    for ignore_index in (IGNORE, None):
        expected = oracle_accuracy(logits, labels, ignore_index=ignore_index)
        got = accuracy(logits, labels, ignore_index=ignore_index)
        assert 5 < expected.item() < 95
        assert abs(got.item() - expected.item()) < TOL


HEAD = dict(type="FCNHead", in_channels=8, channels=6, num_convs=1, concat_input=True, num_classes=5,
            norm_cfg=dict(type="BN"), dropout_ratio=0.0, align_corners=False, ignore_index=IGNORE)
LOSSES = [dict(type="CrossEntropyLoss", loss_weight=1.0),
          dict(type="CrossEntropyLoss", loss_weight=0.4, avg_non_ignore=True),
          dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=0.7, loss_name="loss_bce")]


# thresh: about 6% of the valid pixels are confident enough to drop; thresh-min-kept: min_kept (per image)
# exceeds the pixels below 0.7, so the threshold rises; top-loss: the 2 * 300 hardest pixels.
SAMPLERS = [dict(thresh=0.7, min_kept=200), dict(thresh=0.7, min_kept=2900), dict(min_kept=300)]
SAMPLER_IDS = ["thresh", "thresh-min-kept", "top-loss"]


def _heads(**overrides):
    """(oracle head, semseg head) from the same config with the same random weights (eval mode)."""
    cfg = {**HEAD, **overrides}
    oracle = randomize_(build_oracle_model(cfg, seed=1), seed=2, conv_std=0.3)
    ours = build("head", dict(cfg))
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours.eval()


def _oracle_head_losses(head, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label.unsqueeze(0))
        samples.append(sample)
    return dict(head.loss_by_feat(logits, samples))


def _features_and_labels(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 8, 13, 17, generator=gen)]
    labels = torch.randint(0, 5, (2, 49, 67), generator=gen)
    labels[:, :4] = IGNORE
    labels[0, 10:20, 30:40] = IGNORE
    return feats, labels


def _compare_heads(oracle, ours) -> dict[str, torch.Tensor]:
    feats, labels = _features_and_labels()
    with torch.no_grad():
        oracle_logits = oracle(feats)
        logits = ours(feats)
        expected = _oracle_head_losses(oracle, oracle_logits, labels)
        got = head_losses(ours, logits, labels)
    assert (logits - oracle_logits).abs().max() < TOL
    assert set(got) == set(expected)
    for key in expected:
        assert expected[key].abs() > 1e-2, key
        assert abs(got[key].item() - expected[key].item()) < TOL, (key, got[key], expected[key])
    return got


def test_head_loss_with_several_loss_decode_entries() -> None:
    got = _compare_heads(*_heads(loss_decode=LOSSES))
    assert set(got) == {"loss_ce", "loss_bce", "acc_seg"}


@pytest.mark.parametrize("sampler", SAMPLERS, ids=SAMPLER_IDS)
def test_head_loss_with_ohem_sampler(sampler: dict) -> None:
    sampler_cfg = dict(type="OHEMPixelSampler", **sampler)
    oracle, ours = _heads(loss_decode=LOSSES[:2], sampler=sampler_cfg)
    got = _compare_heads(oracle, ours)
    # the sampler must matter: the same head without it gives another loss
    plain = _heads(loss_decode=LOSSES[:2])[1]
    plain.load_state_dict(ours.state_dict())
    feats, labels = _features_and_labels()
    with torch.no_grad():
        unsampled = head_losses(plain, plain(feats), labels)
    assert abs(unsampled["loss_ce"].item() - got["loss_ce"].item()) > 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS, ids=SAMPLER_IDS)
def test_ohem_sampler_weights(sampler: dict) -> None:
    from mmseg.structures.sampler import OHEMPixelSampler as OracleSampler

    oracle_head, ours_head = _heads(loss_decode=LOSSES[:2])
    feats, labels = _features_and_labels()
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(ours_head(feats), labels.shape[-2:], mode="bilinear")
    expected = OracleSampler(context=oracle_head, **sampler).sample(logits, labels.unsqueeze(1))
    got = OHEMPixelSampler(ignore_index=IGNORE, **sampler).sample(logits, labels, ours_head.loss_decode)
    valid = (labels != IGNORE).sum()
    assert 0 < expected.sum() < valid  # some pixels kept, some dropped
    assert torch.equal(got, expected)
