"""BatchNorm folding and batched slide inference on zoo models against the oracle: the oracle's random weights
(random norm statistics too) loaded into semseg, fused (``semseg.fuse``), and compared with the oracle's
unfused logits. Random-weight logits reach the thousands, so the tolerance is relative to their scale:
max |ours - oracle| <= 1e-5 * max |oracle|."""

from __future__ import annotations

import pytest
import torch
from oracle import (
    build_oracle_model,
    load_oracle_config,
    oracle_encode_decode,
    oracle_inference,
    randomize_,
    save_oracle_state_dict,
)

import semseg

# V1b 7x7 stem (conv1/bn1) + PSP; V1c deep stem (stem.0/1 ...) with basic blocks + depthwise-separable ASPP
# (align_corners=True); V1c with bottlenecks + UPerNet's lateral and FPN ConvModules.
NAMES = [
    "pspnet_r50b-d8_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-769x769",
    "upernet_r50_4xb4-20k_voc12aug-512x512",
]
REL_TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on the shared 2-core machine, spinning OpenMP threads of two busy processes stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relative_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@pytest.fixture(scope="module", params=NAMES)
def fused_pair(request, tmp_path_factory):
    """(oracle model, checkpoint path, semseg model loaded from it and fused)."""
    name = request.param
    oracle = randomize_(build_oracle_model(load_oracle_config(name).model, seed=1), seed=2)
    path = save_oracle_state_dict(oracle, tmp_path_factory.mktemp("ckpt") / f"{name}.pth")
    ours = semseg.init_model(name, checkpoint=path, fuse=True)
    return oracle, path, ours


def test_fused_encode_decode_matches_the_oracle(fused_pair):
    oracle, _, ours = fused_pair
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in ours.modules())
    x = torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(0))
    expected = oracle_encode_decode(oracle, x)
    with torch.no_grad():
        got = ours.encode_decode(x)
    assert expected.abs().max() > 1e-2  # a trivial all-zero output would compare equal
    assert relative_diff(got, expected) < REL_TOL


def test_fused_batched_slide_matches_the_oracle(fused_pair):
    oracle, _, ours = fused_pair
    x = torch.randn(2, 3, 71, 97, generator=torch.Generator().manual_seed(1))
    crop, stride = (48, 56), (27, 31)  # 3 x 3 windows, overlapping unevenly
    expected = oracle_inference(oracle, x, mode="slide", crop_size=crop, stride=stride)
    ours.test_cfg = {"mode": "slide", "crop_size": crop, "stride": stride, "batch_size": 5}
    with torch.no_grad():
        got = ours.inference(x)
    assert relative_diff(got, expected) < REL_TOL


def test_fused_model_no_longer_loads_the_checkpoint(fused_pair):
    _, path, ours = fused_pair
    with pytest.raises(RuntimeError, match="missing keys.*conv1.bias"):
        semseg.load_checkpoint(ours, path)
