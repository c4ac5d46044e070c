"""Inference strategies: slide windows, slide vs whole, test-time augmentation, segmentor mode errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from semseg.build import build
from semseg.models.inference import merge_views, restore_view, slide_inference, slide_windows, whole_inference


def test_slide_windows_exact_small_case() -> None:
    # rows: starts 0, 3, 6, 9 -> the last (9..13) is shifted back to end at 11; cols: 0, 3 -> (2, 7)
    rows = [(0, 4), (3, 7), (6, 10), (7, 11)]
    cols = [(0, 5), (2, 7)]
    expected = [(y1, y2, x1, x2) for (y1, y2), (x1, x2) in itertools.product(rows, cols)]
    assert slide_windows(11, 7, crop=(4, 5), stride=(3, 3)) == expected


def test_slide_windows_image_smaller_than_crop() -> None:
    assert slide_windows(5, 6, crop=(8, 9), stride=(4, 4)) == [(0, 5, 0, 6)]
    # smaller on one side only: one clipped row, the columns slide
    windows = slide_windows(5, 20, crop=(8, 9), stride=(4, 4))
    assert windows == [(0, 5, 0, 9), (0, 5, 4, 13), (0, 5, 8, 17), (0, 5, 11, 20)]
    assert slide_windows(20, 5, crop=(9, 8), stride=(4, 4)) == [(y1, y2, x1, x2) for x1, x2, y1, y2 in windows]


def test_slide_windows_exact_fit_and_stride_not_dividing() -> None:
    assert slide_windows(8, 8, crop=(4, 4), stride=(4, 4)) == [
        (0, 4, 0, 4), (0, 4, 4, 8), (4, 8, 0, 4), (4, 8, 4, 8)]
    # stride 5 does not divide 13 - 4: starts 0, 5, then the last is shifted back to 9..13
    assert [w[:2] for w in slide_windows(13, 4, crop=(4, 4), stride=(5, 5))] == [(0, 4), (5, 9), (9, 13)]


@pytest.mark.parametrize("seed", range(20))
def test_slide_windows_cover_every_pixel(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    height, width, crop_h, crop_w = (int(v) for v in torch.randint(1, 40, (4,), generator=gen))
    stride_h, stride_w = int(torch.randint(1, crop_h + 1, (1,), generator=gen)), int(
        torch.randint(1, crop_w + 1, (1,), generator=gen))
    windows = slide_windows(height, width, (crop_h, crop_w), (stride_h, stride_w))
    covered = torch.zeros(height, width, dtype=torch.int64)
    for y1, y2, x1, x2 in windows:
        assert 0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width
        assert (y2 - y1, x2 - x1) == (min(crop_h, height), min(crop_w, width))
        covered[y1:y2, x1:x2] += 1
    assert (covered > 0).all()
    assert len(set(windows)) == len(windows)


class PixelModel(nn.Module):
    """A per-pixel "segmentor": a 1x1 conv, so its logits do not depend on the crop."""

    def __init__(self, out_channels: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, out_channels, 1)
        self.out_channels = out_channels
        self.align_corners = False
        self.calls = 0

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x)

    def inference(self, x: torch.Tensor) -> torch.Tensor:
        return whole_inference(self, x)


def test_slide_equals_whole_for_a_per_pixel_model() -> None:
    model = PixelModel()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        whole = whole_inference(model, x)
        model.calls = 0
        slid = slide_inference(model, x, crop_size=(16, 24), stride=(11, 13))
    assert model.calls == len(slide_windows(37, 53, (16, 24), (11, 13))) > 4
    assert whole.abs().max() > 0.1
    assert torch.allclose(slid, whole, atol=1e-6)


def test_slide_normalizes_by_window_counts() -> None:
    class Ones(PixelModel):
        def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
            return x.new_ones(x.shape[0], self.out_channels, *x.shape[2:])

    x = torch.randn(1, 3, 29, 31)
    out = slide_inference(Ones(out_channels=2), x, crop_size=(12, 10), stride=(5, 7))
    assert out.shape == (1, 2, 29, 31)
    assert torch.equal(out, torch.ones_like(out))  # overlaps are averaged, not summed


def _views(x: torch.Tensor, ratios=(1.0,), flips=(False,)) -> list[tuple[torch.Tensor, dict]]:
    """Augmented views of x as a TestTimeAug pipeline makes them: resized, maybe flipped, with meta."""
    height, width = x.shape[2:]
    views = []
    for ratio in ratios:
        size = (round(height * ratio), round(width * ratio))
        scaled = nn.functional.interpolate(x, size, mode="bilinear")
        for flip in flips:
            meta = {"img_shape": size, "ori_shape": (height, width), "flip": flip, "flip_direction": "horizontal"}
            views.append((scaled.flip(3) if flip else scaled, meta))
    return views


def test_tta_with_flip_equivariant_model_is_softmax() -> None:
    model = PixelModel(out_channels=5)
    x = torch.randn(1, 3, 21, 26)
    with torch.no_grad():
        probs = merge_views(model, _views(x, flips=(False, True)))
        expected = model.conv(x).softmax(1)
        multi = merge_views(model, _views(x, ratios=(0.5, 0.75, 1.5), flips=(False, True)))
    assert torch.allclose(probs, expected, atol=1e-6)
    assert multi.shape == (1, 5, 21, 26)
    assert torch.allclose(multi.sum(1), torch.ones(1, 21, 26), atol=1e-5)
    assert (multi >= 0).all()


def test_tta_single_channel_uses_sigmoid() -> None:
    model = PixelModel(out_channels=1)
    x = torch.randn(1, 3, 15, 18)
    with torch.no_grad():
        probs = merge_views(model, _views(x))
        assert torch.allclose(probs, model.conv(x).sigmoid(), atol=1e-6)
        multi = merge_views(model, _views(x, ratios=(0.5, 1.25)))
    assert multi.shape == (1, 1, 15, 18) and (multi > 0).all() and (multi < 1).all()


def test_tta_restores_flipped_and_padded_views() -> None:
    class Ramp(PixelModel):
        """Logits depend on position only: a left-to-right ramp in class 0."""

        def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
            logits = x.new_zeros(x.shape[0], 2, *x.shape[2:])
            logits[:, 0] = torch.linspace(-3, 3, x.shape[3])
            return logits

    model = Ramp(out_channels=2)
    x = torch.randn(1, 3, 6, 9)
    plain = merge_views(model, _views(x))
    assert torch.allclose(plain, model.encode_decode(x).softmax(1))
    flipped = merge_views(model, _views(x, flips=(False, True)))
    assert torch.allclose(flipped, flipped.flip(3), atol=1e-6)  # the view and its mirror are averaged
    assert not torch.allclose(flipped, plain, atol=1e-2)
    assert torch.allclose(flipped, (plain + plain.flip(3)) / 2, atol=1e-6)
    padded = nn.functional.pad(x, (0, 3, 0, 2))  # a padded view: only img_shape is the image
    restored = restore_view(model, model.encode_decode(padded), {"img_shape": (6, 9), "ori_shape": (6, 9)})
    assert torch.equal(restored, model.encode_decode(padded)[:, :, :6, :9])


def _segmentor(test_cfg: dict):
    cfg = dict(
        type="EncoderDecoder",
        backbone=dict(type="ResNetV1c", depth=18, stem_channels=16, base_channels=8,
                      out_indices=(3,), strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
        decode_head=dict(type="FCNHead", in_channels=64, channels=8, num_convs=1, num_classes=3,
                         in_index=0, dropout_ratio=0.0),
        test_cfg=test_cfg,
    )
    return build("segmentor", cfg).eval()


def test_segmentor_slide_needs_crop_size_and_stride() -> None:
    x = torch.randn(1, 3, 33, 41)
    with pytest.raises(KeyError, match="crop_size"):
        _segmentor(dict(mode="slide", stride=(16, 16))).inference(x)
    with pytest.raises(KeyError, match="stride"):
        _segmentor(dict(mode="slide", crop_size=(16, 16))).inference(x)


def test_segmentor_unknown_mode_is_named() -> None:
    with pytest.raises(ValueError, match="sliding"):
        _segmentor(dict(mode="sliding")).inference(torch.randn(1, 3, 17, 19))


def test_segmentor_modes_dispatch() -> None:
    x = torch.randn(2, 3, 33, 41)
    model = _segmentor(dict(mode="slide", crop_size=(24, 24), stride=(16, 16)))
    with torch.no_grad():
        slid = model.inference(x)
        expected = slide_inference(model, x, (24, 24), (16, 16))
        model.test_cfg = dict(mode="whole")
        whole = model.inference(x)
        assert torch.equal(whole, model.encode_decode(x))
    assert slid.shape == whole.shape == (2, 3, 33, 41)
    assert torch.equal(slid, expected)
    assert not torch.allclose(slid, whole, atol=1e-4)  # a real CNN sees its context: slide differs
