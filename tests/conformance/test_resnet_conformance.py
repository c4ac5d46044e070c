"""ResNet / ResNetV1c / ResNetV1d against MMSegmentation 1.2.2: same keys, same features."""

import pytest
import torch
from oracle import randomize_, require_oracle

from semseg.build import build

D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
CONFIGS = {
    "v1c18-d8": dict(type="ResNetV1c", depth=18, contract_dilation=True, **D8),
    "v1c50-d8": dict(type="ResNetV1c", depth=50, contract_dilation=True, **D8),
    "v1c50-d16-mg124": dict(type="ResNetV1c", depth=50, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
                            multi_grid=(1, 2, 4), contract_dilation=True),
    "v1b50-d8": dict(type="ResNet", depth=50, contract_dilation=True, **D8),
    "v1d18": dict(type="ResNetV1d", depth=18),
    "v1d50-caffe-d8": dict(type="ResNetV1d", depth=50, style="caffe", **D8),
    "v1c18-gn": dict(type="ResNetV1c", depth=18, norm_cfg=dict(type="GN", num_groups=8), out_indices=(1, 3)),
    "v1b18-gn-3stages": dict(type="ResNet", depth=18, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                             out_indices=(0, 2), norm_cfg=dict(type="GN", num_groups=4)),
}


def _oracle_backbone(cfg: dict) -> torch.nn.Module:
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    torch.manual_seed(0)
    model = MODELS.build(dict(cfg))
    randomize_(model, seed=1)
    model.eval()  # the oracle's ResNet.train returns None, so no chaining
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_keys_and_features(name: str) -> None:
    require_oracle()
    cfg = CONFIGS[name]
    oracle = _oracle_backbone(cfg)
    ours = build("backbone", cfg).eval()
    theirs = oracle.state_dict()
    assert set(ours.state_dict()) == set(theirs)
    result = ours.load_state_dict(theirs, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    x = torch.randn(2, 3, 97, 131, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = oracle(x)
        got = ours(x)
    assert len(got) == len(expected) == len(cfg.get("out_indices", (0, 1, 2, 3)))
    for level, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == e.shape, f"level {level}"
        assert g.shape[1] == ours.out_channels[level]
        assert (g - e).abs().max().item() < 1e-4, f"level {level}: max diff {(g - e).abs().max().item()}"
