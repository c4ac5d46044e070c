"""ImageNet-pretrained names against MMSegmentation 1.2.2 / mmengine: the same URLs as mmengine's hub tables,
and, per backbone family, a synthetic file in the source's layout loaded the oracle's way (the backbone's
``Pretrained`` init through mmengine's CheckpointLoader, its download replaced by the local file) and ours
(the same file in our download cache) gives identical state dicts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from oracle import build_oracle_module, require_oracle

from semseg.build import build
from semseg.engine.pretrained import PRETRAINED, load_pretrained_backbone

HRNET = dict(
    type="HRNet",
    extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(4,)),
        stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(2, 4)),
        stage3=dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(2, 4, 6)),
        stage4=dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1),
                    num_channels=(2, 4, 6, 8)),
    ),
)
RESNEST = dict(type="ResNeSt", depth=50, stem_channels=8, base_channels=4, radix=2, reduction_factor=4,
               avg_down_stride=True)
MOBILENET_V2 = dict(type="MobileNetV2", widen_factor=0.25)
MOBILENET_V3 = dict(type="MobileNetV3", arch="small", out_indices=(0, 1, 12))
RESNET = dict(type="ResNet", depth=18, base_channels=4, stem_channels=4)
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _hub_table(name: str) -> dict[str, str]:
    import mmengine

    return json.loads((Path(mmengine.__file__).parent / "hub" / name).read_text())


def _random_state(backbone: torch.nn.Module, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else torch.randint(1, 50, v.shape, generator=g)
        for k, v in backbone.state_dict().items()
    }


def _hrnet_source(weights: dict[str, torch.Tensor]) -> dict:
    """The official HRNet ImageNet file: a bare state dict, the backbone's keys plus the classification head
    (``incre_modules`` bottlenecks, ``downsamp_modules``, ``final_layer``, ``classifier``)."""
    head = {}
    for i in range(4):
        for j in (1, 2, 3):
            head[f"incre_modules.{i}.0.conv{j}.weight"] = torch.randn(4, 2, 1, 1)
            head.update({f"incre_modules.{i}.0.bn{j}.{p}": torch.randn(4) for p in BN[:4]})
        head[f"incre_modules.{i}.0.downsample.0.weight"] = torch.randn(4, 2, 1, 1)
        head.update({f"incre_modules.{i}.0.downsample.1.{p}": torch.randn(4) for p in BN[:4]})
    for i in range(3):
        head.update({f"downsamp_modules.{i}.0.weight": torch.randn(8, 4, 3, 3), f"downsamp_modules.{i}.0.bias":
                     torch.randn(8)})
        head.update({f"downsamp_modules.{i}.1.{p}": torch.randn(8) for p in BN[:4]})
    head.update({"final_layer.0.weight": torch.randn(16, 8, 1, 1), "final_layer.0.bias": torch.randn(16)})
    head.update({f"final_layer.1.{p}": torch.randn(16) for p in BN[:4]})
    head.update({"classifier.weight": torch.randn(1000, 16), "classifier.bias": torch.randn(1000)})
    return {**weights, **head}


def _resnest_source(weights: dict[str, torch.Tensor]) -> dict:
    """The ResNeSt ``_d2`` files: the official weights renamed to MMSegmentation's layout (conv1 -> stem,
    bn1 -> stem.7) without the classifier and without ``num_batches_tracked``, under ``state_dict``."""
    return {"meta": {}, "state_dict": {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}}


def _mmcls_source(weights: dict[str, torch.Tensor]) -> dict:
    """mmcls's MobileNetV2 file: ``backbone.`` keys (with the 1x1 ``conv2`` to 1280 channels that
    MMSegmentation's MobileNetV2 lacks), the linear head ``head.fc``, and meta."""
    conv2 = {"conv2.conv.weight": torch.randn(1280, 80, 1, 1)}
    conv2.update({f"conv2.bn.{p}": torch.randn(1280) for p in BN[:4]})
    conv2["conv2.bn.num_batches_tracked"] = torch.tensor(5)
    state = {f"backbone.{k}": v for k, v in {**weights, **conv2}.items()}
    state.update({"head.fc.weight": torch.randn(1000, 1280), "head.fc.bias": torch.randn(1000)})
    return {"meta": {"mmcls_version": "0.1.0"}, "state_dict": state}


def _plain_source(weights: dict[str, torch.Tensor]) -> dict:
    return {"state_dict": dict(weights)}


FAMILIES = {
    "hrnet": (HRNET, "open-mmlab://msra/hrnetv2_w18_small", _hrnet_source),
    "resnest": (RESNEST, "open-mmlab://resnest101", _resnest_source),
    "mobilenet_v2": (MOBILENET_V2, "mmcls://mobilenet_v2", _mmcls_source),
    "mobilenet_v3": (MOBILENET_V3, "open-mmlab://contrib/mobilenet_v3_small", _plain_source),
}


def _oracle_loads(cfg: dict, monkeypatch, files: dict[str, Path]) -> torch.nn.Module:
    """Build the oracle backbone from ``cfg`` and run its init (the ``Pretrained`` one included), the
    downloads of the URLs in ``files`` served from the local files."""
    from mmengine.runner import checkpoint as mmengine_checkpoint

    def load_from_http(url: str, map_location=None, **kwargs):
        assert url in files, f"the oracle asked for {url}"
        return torch.load(files[url], map_location=map_location, weights_only=False)

    monkeypatch.setattr(mmengine_checkpoint, "load_from_http", load_from_http)
    torch.manual_seed(0)
    oracle = build_oracle_module(copy.deepcopy(cfg))
    oracle.init_weights()
    return oracle


def _assert_same_state(ours: torch.nn.Module, oracle: torch.nn.Module) -> None:
    theirs = oracle.state_dict()
    mine = ours.state_dict()
    assert mine.keys() == theirs.keys()
    different = [k for k in mine if not torch.equal(mine[k], theirs[k])]
    assert not different, different


def test_urls_are_mmengines() -> None:
    require_oracle()
    tables = {"open-mmlab://": _hub_table("openmmlab.json"), "mmcls://": _hub_table("mmcls.json"),
              "torchvision://": _hub_table("torchvision_0.12.json")}
    for name, weights in PRETRAINED.items():
        scheme = name[: name.index("://") + 3]
        assert tables[scheme][name[len(scheme):]] == weights.url, name


@pytest.mark.parametrize("family", list(FAMILIES))
def test_named_weights_load_as_the_oracle_loads_them(family: str, tmp_path: Path, monkeypatch) -> None:
    require_oracle()
    cfg, name, source_layout = FAMILIES[family]
    weights = _random_state(build("backbone", cfg))
    url = PRETRAINED[name].url
    cache = tmp_path / "checkpoints"
    cache.mkdir()
    path = cache / url.rsplit("/", 1)[1]  # where our download cache keeps the URL's file
    torch.save(source_layout(weights), path)
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path))

    oracle = _oracle_loads({**cfg, "pretrained": name}, monkeypatch, {url: path})
    ours = build("backbone", {**cfg, "pretrained": name})
    result = load_pretrained_backbone(ours, name)

    assert result.ok
    _assert_same_state(ours, oracle)
    loaded = [k for k in weights if not k.endswith("num_batches_tracked") or family != "resnest"]
    assert all(torch.equal(ours.state_dict()[k], weights[k]) for k in loaded)  # the file's values, not init


def test_init_cfg_prefix_as_the_oracle(tmp_path: Path, monkeypatch) -> None:
    """The rsb configs: ``init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=...)`` on an mmcls
    classifier file (``backbone.*`` and ``head.fc.*``)."""
    require_oracle()
    weights = _random_state(build("backbone", RESNET))
    path = tmp_path / "resnet_mmcls.pth"
    state = {f"backbone.{k}": v for k, v in weights.items()}
    torch.save({"meta": {}, "state_dict": {**state, "head.fc.weight": torch.randn(1000, 32)}}, path)
    init_cfg = dict(type="Pretrained", prefix="backbone.", checkpoint=str(path))

    oracle = _oracle_loads({**RESNET, "init_cfg": init_cfg}, monkeypatch, {})
    ours = build("backbone", {**RESNET, "init_cfg": init_cfg})
    assert load_pretrained_backbone(ours, str(path), prefix="backbone.").ok
    _assert_same_state(ours, oracle)


def test_extra_keys_are_ignored_as_by_the_oracle(tmp_path: Path, monkeypatch) -> None:
    """A key the backbone lacks is skipped by both (ours says so); everything else loads the same."""
    require_oracle()
    weights = _random_state(build("backbone", MOBILENET_V3))
    path = tmp_path / "mobilenet_v3_extra.pth"
    torch.save({**weights, "classifier.3.weight": torch.randn(1000, 1024)}, path)

    oracle = _oracle_loads({**MOBILENET_V3, "pretrained": str(path)}, monkeypatch, {})
    ours = build("backbone", {**MOBILENET_V3, "pretrained": str(path)})
    with pytest.warns(UserWarning, match=r"classifier\.3\.weight"):
        load_pretrained_backbone(ours, str(path))
    _assert_same_state(ours, oracle)
