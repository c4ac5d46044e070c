"""ImageNet backbone weights named by configs: resolved, loaded into the backbone, classifier ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semseg.build import build
from semseg.engine.pretrained import PRETRAINED_URLS, load_pretrained_backbone, pretrained_source

BACKBONE = dict(type="ResNet", depth=18, base_channels=8, stem_channels=8)


def _classifier_checkpoint(path: Path) -> dict:
    """A torchvision-style file: the backbone's keys plus the ImageNet classifier ``fc``."""
    torch.manual_seed(1)
    weights = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in build("backbone", BACKBONE).state_dict().items()}
    torch.save({**weights, "fc.weight": torch.randn(1000, 64), "fc.bias": torch.randn(1000)}, path)
    return weights


def test_pretrained_source_reads_both_config_forms() -> None:
    assert pretrained_source({"pretrained": "open-mmlab://resnet50_v1c", "backbone": {}}) == "open-mmlab://resnet50_v1c"
    init_cfg = {"type": "Pretrained", "checkpoint": "torchvision://resnet50"}
    assert pretrained_source({"backbone": {"init_cfg": init_cfg}}) == "torchvision://resnet50"
    assert pretrained_source({"pretrained": None, "backbone": {}}) is None


def test_every_zoo_pretrained_name_has_a_hashed_url() -> None:
    for name, url in PRETRAINED_URLS.items():
        assert url.startswith("https://") and url.rsplit("-", 1)[1].split(".")[0].isalnum(), name


@pytest.mark.parametrize("as_url", [False, True])
def test_loads_backbone_and_ignores_the_classifier(tmp_path: Path, as_url: bool, monkeypatch) -> None:
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path / "cache"))
    path = tmp_path / "resnet18_imagenet.pth"
    weights = _classifier_checkpoint(path)
    backbone = build("backbone", BACKBONE)
    load_pretrained_backbone(backbone, path.as_uri() if as_url else str(path))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    _classifier_checkpoint(path)
    deeper = build("backbone", {**BACKBONE, "depth": 34})
    before = {k: v.clone() for k, v in deeper.state_dict().items()}
    with pytest.raises(RuntimeError, match="do not fit the backbone"):
        load_pretrained_backbone(deeper, str(path))
    assert all(torch.equal(v, before[k]) for k, v in deeper.state_dict().items())  # nothing half-loaded


def test_unknown_scheme_lists_the_known_names() -> None:
    with pytest.raises(KeyError, match="open-mmlab://resnet50_v1c"):
        load_pretrained_backbone(build("backbone", BACKBONE), "open-mmlab://resnet5000")


def test_unreachable_weights_say_how_to_train_from_scratch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path / "cache"))
    missing = (tmp_path / "nowhere" / "resnet18-00000000.pth").as_uri()
    with pytest.raises(OSError, match="model.pretrained=None"):
        load_pretrained_backbone(build("backbone", BACKBONE), missing)
