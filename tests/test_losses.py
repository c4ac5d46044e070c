"""Cross entropy reductions, sigmoid losses, accuracy, OHEM sampling and a head's loss dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semseg.build import build
from semseg.models.losses import CrossEntropyLoss, accuracy, binary_cross_entropy, cross_entropy, head_losses
from semseg.models.sampler import OHEMPixelSampler

IGNORE = 255


def _data(channels: int = 5, seed: int = 0, num_classes: int | None = None):
    """logits (2, C, 7, 9) and labels (2, 7, 9) with an ignored first row and a few ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, 7, 9, generator=gen) * 2
    labels = torch.randint(0, num_classes or channels, (2, 7, 9), generator=gen)
    labels[:, 0] = IGNORE
    labels[1, 3, 4] = IGNORE
    return logits, labels


def test_default_mean_is_over_all_pixels() -> None:
    logits, labels = _data()
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    loss = CrossEntropyLoss()(logits, labels, ignore_index=IGNORE)
    assert per_pixel.sum() > 1
    assert torch.allclose(loss, per_pixel.sum() / labels.numel())
    # ignored pixels count in the denominator, so this is below PyTorch's own mean
    assert loss < F.cross_entropy(logits, labels, ignore_index=IGNORE)


def test_avg_non_ignore_is_pytorch_mean() -> None:
    logits, labels = _data()
    loss = CrossEntropyLoss(avg_non_ignore=True)(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, ignore_index=IGNORE))


def test_class_weight_mean_divides_by_label_weights() -> None:
    logits, labels = _data()
    class_weight = [0.5, 1.0, 2.0, 3.0, 0.25]
    cw = torch.tensor(class_weight)
    per_pixel = F.cross_entropy(logits, labels, weight=cw, ignore_index=IGNORE, reduction="none")
    valid = labels != IGNORE
    label_weight_sum = cw[labels[valid]].sum()
    loss = CrossEntropyLoss(class_weight=class_weight, avg_non_ignore=True)(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, weight=cw, ignore_index=IGNORE))
    assert torch.allclose(loss, per_pixel.sum() / label_weight_sum)
    # without avg_non_ignore each ignored pixel adds 1 to the denominator
    loss_all = CrossEntropyLoss(class_weight=class_weight)(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(loss_all, per_pixel.sum() / (label_weight_sum + (~valid).sum()))
    # all-ones class weights give the unweighted loss
    ones = CrossEntropyLoss(class_weight=[1.0] * 5)(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(ones, CrossEntropyLoss()(logits, labels, ignore_index=IGNORE))


def test_loss_weight_and_reduction_override() -> None:
    logits, labels = _data()
    base = CrossEntropyLoss()(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(CrossEntropyLoss(loss_weight=0.4)(logits, labels, ignore_index=IGNORE), 0.4 * base)
    per_pixel = CrossEntropyLoss(loss_weight=2.0)(logits, labels, ignore_index=IGNORE, reduction_override="none")
    assert per_pixel.shape == labels.shape
    assert (per_pixel[labels == IGNORE] == 0).all() and (per_pixel[labels != IGNORE] > 0).all()
    assert torch.allclose(per_pixel.sum() / 2, CrossEntropyLoss(reduction="sum")(logits, labels, ignore_index=IGNORE))


def test_pixel_weight_and_avg_factor() -> None:
    logits, labels = _data()
    weight = (torch.arange(labels.numel()).view(labels.shape) % 2).float()
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    got = cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE, avg_factor=10.0)
    assert torch.allclose(got, (per_pixel * weight).sum() / 10.0)
    with pytest.raises(ValueError, match="avg_factor"):
        cross_entropy(logits, labels, reduction="sum", avg_factor=3.0, ignore_index=IGNORE)


def test_sigmoid_single_channel_binary_labels() -> None:
    logits, labels = _data(channels=1, num_classes=2)
    valid = labels != IGNORE
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], labels.clamp(max=1).float(), reduction="none")
    loss = CrossEntropyLoss(use_sigmoid=True)(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(loss, (per_pixel * valid).sum() / labels.numel())
    loss = CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(loss, per_pixel[valid].mean())
    bad = labels.clone()
    bad[0, 2, 2] = 3
    with pytest.raises(ValueError, match="0, 1"):
        binary_cross_entropy(logits, bad, ignore_index=IGNORE)


def test_sigmoid_multi_channel_is_one_hot() -> None:
    logits, labels = _data()
    valid = labels != IGNORE
    one_hot = F.one_hot(labels.clamp(max=4), 5).permute(0, 3, 1, 2).float()
    per_elem = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none") * valid.unsqueeze(1)
    loss = CrossEntropyLoss(use_sigmoid=True)(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(loss, per_elem.sum() / logits.numel())
    loss = CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(logits, labels, ignore_index=IGNORE)
    assert torch.allclose(loss, per_elem.sum() / (valid.sum() * 5))
    none = CrossEntropyLoss(use_sigmoid=True)(logits, labels, ignore_index=IGNORE, reduction_override="none")
    assert none.shape == logits.shape and torch.allclose(none, per_elem)


def test_unsupported_options_are_refused() -> None:
    with pytest.raises(NotImplementedError, match="use_mask"):
        CrossEntropyLoss(use_mask=True)
    with pytest.raises(ValueError, match="class_weight"):
        CrossEntropyLoss(class_weight="weights.npy")


def test_loss_name_and_build() -> None:
    loss = build("loss", dict(type="CrossEntropyLoss", loss_name="loss_x", loss_weight=0.5))
    assert loss.loss_name == "loss_x" and loss.loss_weight == 0.5
    with pytest.raises(KeyError, match="CrossEntropyLoss"):
        build("loss", dict(type="CrossEntropyLos"))


def test_accuracy() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 1.0  # predicts class 1 everywhere
    labels = torch.tensor([[[1, 1], [0, IGNORE]]])
    assert torch.allclose(accuracy(logits, labels, ignore_index=IGNORE), torch.tensor(200.0 / 3))
    assert torch.allclose(accuracy(logits, labels), torch.tensor(50.0))
    assert accuracy(logits, torch.full_like(labels, IGNORE), ignore_index=IGNORE) == 0


def _confident_data(seed: int):
    """Like ``_data`` but about half the pixels predict their label with high confidence."""
    logits, labels = _data(seed=seed)
    boost = torch.rand(labels.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    one_hot = F.one_hot(labels.clamp(max=4), 5).permute(0, 3, 1, 2)
    return logits + 6.0 * one_hot * boost.unsqueeze(1), labels


def _true_class_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.softmax(1).gather(1, labels.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)


def test_ohem_with_thresh_keeps_low_confidence_pixels() -> None:
    logits, labels = _confident_data(seed=3)
    valid = labels != IGNORE
    prob = _true_class_prob(logits, labels)
    weights = OHEMPixelSampler(thresh=0.7, min_kept=5).sample(logits, labels)
    expected = (valid & (prob < 0.7)).float()
    assert 0 < expected.sum() < valid.sum()  # some pixels are confident, some are not
    assert torch.equal(weights, expected)


def test_ohem_min_kept_raises_the_threshold() -> None:
    logits, labels = _confident_data(seed=3)
    valid = labels != IGNORE
    prob = _true_class_prob(logits, labels)[valid]
    min_kept = int((prob < 0.7).sum()) // 2 + 10  # per image: more than the pixels below 0.7
    assert 2 * min_kept < valid.sum()
    weights = OHEMPixelSampler(thresh=0.7, min_kept=min_kept).sample(logits, labels)
    kth = prob.sort().values[2 * min_kept]
    assert kth > 0.7
    assert weights.sum() == (prob < kth).sum() == 2 * min_kept
    assert (weights[~valid] == 0).all()


def test_ohem_without_thresh_keeps_top_loss_pixels() -> None:
    logits, labels = _data(seed=4)
    loss = CrossEntropyLoss()
    weights = OHEMPixelSampler(min_kept=10).sample(logits, labels, loss)
    assert weights.sum() == 20 and (weights[labels == IGNORE] == 0).all()
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    kept, dropped = per_pixel[weights == 1], per_pixel[(weights == 0) & (labels != IGNORE)]
    assert kept.min() >= dropped.max()


def _head(**kwargs):
    cfg = dict(type="FCNHead", in_channels=6, channels=4, num_convs=1, concat_input=False, num_classes=5,
               dropout_ratio=0.0, **kwargs)
    return build("head", cfg)


def test_head_losses_sum_per_name() -> None:
    torch.manual_seed(0)
    loss_decode = [dict(type="CrossEntropyLoss", loss_weight=1.0),
                   dict(type="CrossEntropyLoss", loss_weight=0.5),
                   dict(type="CrossEntropyLoss", loss_name="loss_other", use_sigmoid=True)]
    head = _head(loss_decode=loss_decode)
    feats = [torch.randn(2, 6, 4, 5)]
    _, labels = _data()
    logits = head(feats)
    result = head_losses(head, logits, labels)
    assert set(result) == {"loss_ce", "loss_other", "acc_seg"}
    up = F.interpolate(logits, labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = CrossEntropyLoss()(up, labels, ignore_index=IGNORE)
    assert ce > 0.1
    assert torch.allclose(result["loss_ce"], 1.5 * ce)
    assert torch.allclose(result["loss_other"], CrossEntropyLoss(use_sigmoid=True)(up, labels, ignore_index=IGNORE))
    assert torch.allclose(result["acc_seg"], accuracy(up, labels, ignore_index=IGNORE))


def test_head_losses_with_sampler_weights_pixels() -> None:
    torch.manual_seed(0)
    head = _head(sampler=dict(type="OHEMPixelSampler", min_kept=10))
    assert head.sampler.ignore_index == IGNORE
    feats = [torch.randn(2, 6, 4, 5)]
    _, labels = _data()
    logits = head(feats)
    up = F.interpolate(logits, labels.shape[-2:], mode="bilinear", align_corners=False)
    weights = head.sampler.sample(up, labels, head.loss_decode)
    per_pixel = F.cross_entropy(up, labels, ignore_index=IGNORE, reduction="none")
    result = head_losses(head, logits, labels)
    assert torch.allclose(result["loss_ce"], (per_pixel * weights).sum() / labels.numel())
    assert not torch.allclose(result["loss_ce"], per_pixel.sum() / labels.numel())
