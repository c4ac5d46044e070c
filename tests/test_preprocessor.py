"""SegDataPreProcessor: channel order, normalization, padding of images and labels."""

from __future__ import annotations

import pytest
import torch

from semseg.build import build
from semseg.models.preprocessor import SegDataPreProcessor, pad_to, padded_size

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_bgr_to_rgb_and_normalize() -> None:
    image = _image(5, 7)
    pre = SegDataPreProcessor(mean=MEAN, std=STD, bgr_to_rgb=True)
    batch, labels = pre([image])
    assert labels is None and batch.dtype == torch.float32 and batch.shape == (1, 3, 5, 7)
    rgb = image.flip(0).float()
    expected = (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(batch[0], expected)
    # the swap happens before normalizing: channel 0 is the input's channel 2 with the first mean
    assert torch.allclose(batch[0, 0], (image[2].float() - MEAN[0]) / STD[0])


def test_rgb_to_bgr_swaps_too_and_both_is_an_error() -> None:
    image = _image(4, 4)
    batch, _ = SegDataPreProcessor(rgb_to_bgr=True)([image])
    assert torch.equal(batch[0], image.flip(0).float())
    with pytest.raises(ValueError, match="bgr_to_rgb"):
        SegDataPreProcessor(bgr_to_rgb=True, rgb_to_bgr=True)


def test_without_mean_std_only_casts() -> None:
    image = _image(6, 3)
    batch, _ = SegDataPreProcessor()([image])
    assert torch.equal(batch[0], image.float())
    with pytest.raises(ValueError, match="mean and std"):
        SegDataPreProcessor(mean=MEAN)


def test_single_channel_image_is_not_swapped() -> None:
    gray = torch.arange(12, dtype=torch.uint8).view(1, 3, 4)
    batch, _ = SegDataPreProcessor(bgr_to_rgb=True)([gray])
    assert torch.equal(batch[0], gray.float())


def test_training_pads_to_size_bottom_right() -> None:
    pre = SegDataPreProcessor(mean=MEAN, std=STD, size=(12, 16), pad_val=0, seg_pad_val=255, bgr_to_rgb=True)
    images = [_image(9, 13, seed=1), _image(12, 10, seed=2)]
    labels = [torch.randint(0, 5, (9, 13)), torch.randint(0, 5, (12, 10))]
    batch, padded = pre(images, labels, training=True)
    assert batch.shape == (2, 3, 12, 16) and padded.shape == (2, 12, 16) and padded.dtype == torch.long
    assert torch.equal(batch[0, :, :9, :13], pre.normalize_image(images[0]))
    assert (batch[0, :, 9:] == 0).all() and (batch[0, :, :, 13:] == 0).all()  # pad_val after normalizing
    assert torch.equal(padded[0, :9, :13], labels[0])
    assert (padded[0, 9:] == 255).all() and (padded[0, :, 13:] == 255).all()
    assert torch.equal(padded[1, :, :10], labels[1]) and (padded[1, :, 10:] == 255).all()


def test_training_size_divisor_and_custom_pad_values() -> None:
    pre = SegDataPreProcessor(size_divisor=8, pad_val=7, seg_pad_val=100)
    images = [_image(9, 13), _image(5, 17)]
    batch, padded = pre(images, [torch.zeros(9, 13), torch.ones(5, 17)], training=True)
    assert batch.shape == (2, 3, 16, 24)
    assert (batch[1, :, 5:] == 7).all() and (padded[1, 5:] == 100).all() and (padded[1, :5, :17] == 1).all()


def test_test_time_padding_follows_test_cfg_only() -> None:
    images = [_image(9, 13), _image(9, 13, seed=3)]
    pre = SegDataPreProcessor(size=(64, 64), test_cfg=dict(size_divisor=32))
    batch, _ = pre(images)
    assert batch.shape == (2, 3, 32, 32)  # not the training size
    assert torch.equal(batch[1, :, :9, :13], images[1].float()) and (batch[:, :, 9:] == 0).all()
    assert SegDataPreProcessor(size=(64, 64))(images)[0].shape == (2, 3, 9, 13)
    assert SegDataPreProcessor(test_cfg=dict(size=(10, 20)))(images)[0].shape == (2, 3, 10, 20)


def test_padded_size_and_pad_to() -> None:
    assert padded_size([(9, 13), (12, 10)], None, None) == (12, 13)
    assert padded_size([(9, 13)], (12, 16), None) == (12, 16)
    assert padded_size([(20, 13)], (12, 16), None) == (20, 16)  # never crops
    assert padded_size([(9, 13)], None, 32) == (32, 32)
    assert padded_size([(64, 33)], None, 32) == (64, 64)
    x = torch.ones(2, 3, 4)
    out = pad_to(x, 5, 6, value=-1)
    assert out.shape == (2, 5, 6) and torch.equal(out[:, :3, :4], x) and out[:, 3:].eq(-1).all()


def test_mean_std_are_buffers_not_in_checkpoints() -> None:
    pre = SegDataPreProcessor(mean=MEAN, std=STD)
    assert dict(pre.named_buffers())["mean"].shape == (3, 1, 1)
    assert pre.state_dict() == {}


def test_batch_augments_refused_and_build() -> None:
    with pytest.raises(NotImplementedError, match="batch_augments"):
        SegDataPreProcessor(batch_augments=[dict(type="Mixup")])
    pre = build("data_preprocessor", dict(type="SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True,
                                          pad_val=0, seg_pad_val=255, size=(512, 1024)))
    assert pre.size == (512, 1024) and pre.swap_channels and pre.seg_pad_val == 255
