"""SegDataPreProcessor against MMSegmentation 1.2.2's on uint8 CHW images of different sizes."""

from __future__ import annotations

import pytest
import torch
from oracle import install_ext_stub

from semseg.models.preprocessor import SegDataPreProcessor

install_ext_stub()

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in sizes]
    labels = [torch.randint(0, 19, (h, w), generator=gen) for h, w in sizes]
    for label in labels:
        label[0] = 255
    return images, labels


def _oracle(cfg: dict, images: list[torch.Tensor], labels: list[torch.Tensor] | None, training: bool):
    """The oracle's (inputs, padded labels or None)."""
    from mmengine.structures import PixelData
    from mmseg.models.data_preprocessor import SegDataPreProcessor as OraclePreProcessor
    from mmseg.structures import SegDataSample

    samples = []
    for i in range(len(images)):
        sample = SegDataSample()
        if labels is not None:
            sample.gt_sem_seg = PixelData(data=labels[i].unsqueeze(0).clone())
        samples.append(sample)
    out = OraclePreProcessor(**cfg)(dict(inputs=[x.clone() for x in images], data_samples=samples), training)
    if labels is None:
        return out["inputs"], None
    return out["inputs"], torch.cat([s.gt_sem_seg.data for s in out["data_samples"]])


TRAIN = {
    "cityscapes-like": (dict(mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(64, 80)),
                        [(57, 71), (64, 49), (33, 80)]),
    "size_divisor": (dict(mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size_divisor=16),
                     [(57, 71), (41, 90)]),
    "pad-values-no-swap": (dict(mean=MEAN, std=STD, pad_val=3, seg_pad_val=0, size=(60, 73)),
                           [(57, 71), (60, 50)]),
}


@pytest.mark.parametrize("case", sorted(TRAIN))
def test_training_batch(case: str) -> None:
    cfg, sizes = TRAIN[case]
    images, labels = _images(sizes)
    expected_x, expected_y = _oracle(cfg, images, labels, training=True)
    x, y = SegDataPreProcessor(**cfg)(images, labels, training=True)
    assert x.shape == expected_x.shape and y.shape == expected_y.shape
    assert expected_x.abs().max() > 1 and (expected_y == cfg["seg_pad_val"]).any()  # padding happened
    assert (x - expected_x).abs().max() < 1e-5
    assert torch.equal(y, expected_y.long())


TEST = {
    "no-test-cfg": dict(mean=MEAN, std=STD, bgr_to_rgb=True, size=(64, 80)),
    "test-size-divisor": dict(mean=MEAN, std=STD, bgr_to_rgb=True, test_cfg=dict(size_divisor=32)),
    "test-size": dict(mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=5, test_cfg=dict(size=(64, 100))),
}


@pytest.mark.parametrize("case", sorted(TEST))
def test_test_batch(case: str) -> None:
    cfg = TEST[case]
    images, _ = _images([(57, 71), (57, 71)], seed=1)  # at test time a batch shares one size
    expected_x, _ = _oracle(cfg, images, None, training=False)
    x, _ = SegDataPreProcessor(**cfg)(images)
    assert x.shape == expected_x.shape
    assert expected_x.abs().max() > 1
    assert (x - expected_x).abs().max() < 1e-5
