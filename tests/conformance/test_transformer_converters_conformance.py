"""Pretrained transformer files against MMSegmentation 1.2.2: our conversion of a timm ViT / official Swin file
(semseg.engine.converters, through the loader) against the oracle's own conversion of the same file
(``tools/model_converters/vit2mmseg.py`` / ``swin2mmseg.py``, as shipped in mmseg's ``.mim`` folder) loaded by
the oracle backbone's ``init_weights`` (which resizes ``pos_embed`` and the relative position bias tables).
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch
from oracle import build_oracle_module, max_diff, require_oracle
from test_transformer_converters import VIT, official_swin_state, timm_vit_state
from torch import nn

from semseg.build import build
from semseg.engine.converters import convert_official_swin, fit_swin
from semseg.engine.pretrained import load_pretrained_backbone

TOL = 1e-4


def oracle_converter(name: str) -> types.ModuleType:
    """The oracle's ``tools/model_converters/<name>.py`` as a module (its ``convert_vit`` / ``convert_swin``)."""
    require_oracle()
    import mmseg

    path = Path(mmseg.__file__).parent / ".mim" / "tools" / "model_converters" / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"the oracle's converter {path} is not installed")
    spec = importlib.util.spec_from_file_location(f"oracle_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _oracle_pretrained(cfg: dict, path: Path) -> nn.Module:
    """The oracle backbone of ``cfg`` initialised from the (MMSegmentation-layout) file at ``path``."""
    torch.manual_seed(0)
    oracle = build_oracle_module({**cfg, "init_cfg": dict(type="Pretrained", checkpoint=str(path))})
    oracle.init_weights()
    oracle.eval()  # MMSegmentation's backbones return None from train()
    return oracle


def _assert_outputs_equal(got: list[torch.Tensor], expected: list[torch.Tensor]) -> list[float]:
    assert len(got) == len(expected)
    diffs = []
    for g, e in zip(got, expected, strict=True):
        assert e.abs().max() > 1e-2
        diffs.append(max_diff(g, e))
    assert max(diffs) < TOL, diffs
    return diffs


@pytest.mark.parametrize("final_norm, patch_bias", [(True, True), (False, False)])
def test_vit_from_timm_file_matches_oracle_conversion(tmp_path: Path, final_norm: bool, patch_bias: bool) -> None:
    """A timm file (6 x 6 grid) into a 8 x 8 grid ViT: ours converts and resizes on loading; the oracle loads
    vit2mmseg's output with its init_weights. Same weights, same features on 29 x 37 inputs (10 x 8 grids
    with padding: the position embedding is resized again in the forward)."""
    cfg = {**VIT, "final_norm": final_norm, "patch_bias": patch_bias}
    source = timm_vit_state(seed=3)
    torch.save({"model": source}, tmp_path / "deit.pth")  # DeiT's wrapping; timm's is bare
    torch.save(oracle_converter("vit2mmseg").convert_vit(source), tmp_path / "converted.pth")
    oracle = _oracle_pretrained(cfg, tmp_path / "converted.pth")
    ours = build("backbone", dict(cfg)).eval()
    assert load_pretrained_backbone(ours, str(tmp_path / "deit.pth")).ok
    theirs = oracle.state_dict()
    assert set(ours.state_dict()) == set(theirs)
    for key, value in ours.state_dict().items():
        assert torch.allclose(value, theirs[key], atol=1e-6), key
    x = torch.randn(2, 3, 29, 37, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _assert_outputs_equal(ours(x), oracle(x))


SWIN = dict(type="SwinTransformer", pretrain_img_size=48, embed_dims=8, depths=(2, 2), num_heads=(1, 2),
            window_size=3, strides=(4, 2), out_indices=(0, 1), mlp_ratio=4)


def test_swin_converter_matches_swin2mmseg() -> None:
    """Same keys and values as the oracle's swin2mmseg, except what the oracle keeps only for its loader to
    ignore (the classifier's ``norm`` and the ``attn_mask`` buffers); same keys as the oracle's Swin, less
    the output norms that no ImageNet file holds."""
    source = official_swin_state(seed=5)
    theirs = oracle_converter("swin2mmseg").convert_swin(source)
    ours = convert_official_swin(source)
    ignored = {k for k in theirs if k.startswith("norm.") or k.endswith("attn_mask")}
    assert ignored and set(ours) == set(theirs) - ignored
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key
    oracle_keys = set(build_oracle_module(SWIN).state_dict())
    assert set(ours) == oracle_keys - {"norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias"}


@pytest.mark.parametrize("window", [3, 5])
def test_swin_fit_matches_oracle_init_weights(tmp_path: Path, window: int) -> None:
    """The official window-3 file into a window-``window`` oracle Swin: the oracle loads swin2mmseg's output
    with its init_weights (bias tables resized bicubically); ours converts and fits the same file. Loaded
    into a twin oracle Swin, our weights give the same features (odd 45 x 53 input: padded windows)."""
    source = official_swin_state(seed=6)
    if window != 3:  # the oracle cannot load a relative position index of another window (size mismatch)
        source = {k: v for k, v in source.items() if not k.endswith("relative_position_index")}
    cfg = {**SWIN, "window_size": window}
    torch.save(oracle_converter("swin2mmseg").convert_swin(source), tmp_path / "converted.pth")
    oracle = _oracle_pretrained(cfg, tmp_path / "converted.pth")
    torch.manual_seed(0)
    twin = build_oracle_module(cfg)
    twin.init_weights()  # the same start as the oracle's (same seed): the output norms keep it
    fitted = fit_swin(twin, source)
    missing, unexpected = twin.load_state_dict(fitted.state_dict, strict=False)
    assert not unexpected
    expected_missing = {"norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias"}
    if window != 3:
        expected_missing |= {k for k in twin.state_dict() if k.endswith("relative_position_index")}
    assert set(missing) == expected_missing
    twin.eval()
    theirs = oracle.state_dict()
    for key, value in twin.state_dict().items():
        assert torch.allclose(value.float(), theirs[key].float(), atol=1e-6), key
    # Ours: the official file straight into semseg's Swin through the loader.
    torch.save(source, tmp_path / "official.pth")
    ours = build("backbone", dict(cfg)).eval()
    assert load_pretrained_backbone(ours, str(tmp_path / "official.pth")).ok
    assert set(ours.state_dict()) == set(theirs)
    for key, value in ours.state_dict().items():
        assert torch.allclose(value.float(), theirs[key].float(), atol=1e-6), key
    x = torch.randn(2, 3, 45, 53, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = oracle(x)
        _assert_outputs_equal(twin(x), expected)
        _assert_outputs_equal(ours(x), expected)
