"""ImageNet weights of the new backbones (HRNet, ResNeSt, MobileNetV2/V3): names resolved to their URLs, each
source's key layout converted to the backbone's (every key mapped or dropped, none left over), loaded."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from semseg.build import build
from semseg.config import Config
from semseg.engine.pretrained import (
    HRNET_CLASSIFIER,
    PRETRAINED,
    PretrainedWeights,
    convert_pretrained,
    load_pretrained_backbone,
    pretrained_prefix,
    pretrained_source,
    resolve_pretrained,
)

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "semseg" / "configs"
THIRD_PARTY = "https://download.openmmlab.com/pretrain/third_party"

# The published files (mmengine's hub/openmmlab.json and hub/mmcls.json).
EXPECTED_URLS = {
    "open-mmlab://msra/hrnetv2_w18_small": f"{THIRD_PARTY}/hrnetv2_w18_small-b5a04e21.pth",
    "open-mmlab://msra/hrnetv2_w18": f"{THIRD_PARTY}/hrnetv2_w18-00eb2006.pth",
    "open-mmlab://msra/hrnetv2_w48": f"{THIRD_PARTY}/hrnetv2_w48-d2186c55.pth",
    "open-mmlab://resnest50": f"{THIRD_PARTY}/resnest50_d2-7497a55b.pth",
    "open-mmlab://resnest101": f"{THIRD_PARTY}/resnest101_d2-f3b931b2.pth",
    "open-mmlab://resnest200": f"{THIRD_PARTY}/resnest200_d2-ca88e41f.pth",
    "open-mmlab://contrib/mobilenet_v3_large": f"{THIRD_PARTY}/mobilenet_v3_large-bc2c3fd3.pth",
    "open-mmlab://contrib/mobilenet_v3_small": f"{THIRD_PARTY}/mobilenet_v3_small-47085aa1.pth",
    "mmcls://mobilenet_v2": "https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/"
    "mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth",
}

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
MOBILENET_V2 = dict(type="MobileNetV2", widen_factor=0.25)
RESNEST = dict(type="ResNeSt", depth=50, stem_channels=8, base_channels=4, radix=2, reduction_factor=4,
               avg_down_stride=True)
RESNET = dict(type="ResNet", depth=18, base_channels=4, stem_channels=4)


def _random_state(backbone: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """The backbone's keys with random values (integer buffers: random counts)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(1, 100, v.shape, generator=g) if not v.is_floating_point() else torch.randn(v.shape, generator=g)
        for k, v in backbone.state_dict().items()
    }


def _hrnet_classifier(widths: tuple[int, ...] = (2, 4, 6, 8)) -> dict[str, torch.Tensor]:
    """The official HRNet classification head's keys: a bottleneck per branch (``incre_modules``), strided
    3x3 convs between them (``downsamp_modules``), a 1x1 conv to 2048 (``final_layer``) and the linear
    ``classifier``; tiny shapes, the head is dropped anyway."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = []
    for i in range(len(widths)):
        block = f"incre_modules.{i}.0"
        keys += [f"{block}.conv{j}.weight" for j in (1, 2, 3)]
        keys += [f"{block}.bn{j}.{p}" for j in (1, 2, 3) for p in bn]
        keys += [f"{block}.downsample.0.weight"] + [f"{block}.downsample.1.{p}" for p in bn]
    for i in range(len(widths) - 1):
        keys += [f"downsamp_modules.{i}.0.weight", f"downsamp_modules.{i}.0.bias"]
        keys += [f"downsamp_modules.{i}.1.{p}" for p in bn]
    keys += ["final_layer.0.weight", "final_layer.0.bias"] + [f"final_layer.1.{p}" for p in bn]
    keys += ["classifier.weight", "classifier.bias"]
    return {k: torch.zeros(1, dtype=torch.long) if k.endswith("tracked") else torch.randn(2) for k in keys}


def _mmcls_file(backbone_state: dict[str, torch.Tensor]) -> dict:
    """An mmcls MobileNetV2 checkpoint: ``backbone.``-prefixed keys, the ``conv2`` 1x1 conv MMSegmentation's
    MobileNetV2 lacks, the linear head, and meta."""
    bn = {f"conv2.bn.{p}": torch.randn(4) for p in ("weight", "bias", "running_mean", "running_var")}
    extra = {"conv2.conv.weight": torch.randn(4, 80, 1, 1), **bn, "conv2.bn.num_batches_tracked": torch.tensor(7)}
    state = {f"backbone.{k}": v for k, v in {**backbone_state, **extra}.items()}
    state.update({"head.fc.weight": torch.randn(1000, 4), "head.fc.bias": torch.randn(1000)})
    return {"meta": {"epoch": 300}, "state_dict": state}


def _place_in_cache(home: Path, url: str, obj: dict) -> None:
    """Save ``obj`` where ``download_checkpoint`` caches ``url`` (a hashed name is cached by name)."""
    cache = home / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(obj, cache / url.rsplit("/", 1)[1])


def _config_pretrained_names() -> set[str]:
    pattern = re.compile(r"(?:pretrained|checkpoint)\s*=\s*'([a-z-]+://[^']+)'")
    return {m for path in CONFIG_ROOT.rglob("*.py") for m in pattern.findall(path.read_text())}


# ----------------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_URLS))
def test_new_backbone_names_resolve_to_their_urls(name: str) -> None:
    assert resolve_pretrained(name) == EXPECTED_URLS[name]


def test_every_scheme_name_in_the_configs_resolves_to_a_hashed_https_url() -> None:
    names = _config_pretrained_names()
    assert {"open-mmlab://msra/hrnetv2_w48", "mmcls://mobilenet_v2", "open-mmlab://resnest101"} <= names
    for name in names:
        url = resolve_pretrained(name)
        assert url.startswith("https://") and re.search(r"-[0-9a-f]{8}\.pth$", url), (name, url)


def test_scheme_aliases_and_plain_locations() -> None:
    assert resolve_pretrained("openmmlab://msra/hrnetv2_w18") == EXPECTED_URLS["open-mmlab://msra/hrnetv2_w18"]
    assert resolve_pretrained("modelzoo://resnet50") == resolve_pretrained("torchvision://resnet50")
    for plain in ("weights/hrnet.pth", "https://example.org/a-0123abcd.pth", "file:///tmp/b.pth"):
        assert resolve_pretrained(plain) == plain


def test_unknown_names_say_which_exist() -> None:
    with pytest.raises(KeyError, match="did you mean 'open-mmlab://msra/hrnetv2_w18_small'"):
        resolve_pretrained("open-mmlab://msra/hrnetv2_w18_smal")
    with pytest.raises(KeyError, match="mmcls://mobilenet_v2"):
        resolve_pretrained("mmcls://resnet5000")
    with pytest.raises(KeyError, match="unknown pretrained weights 's3://bucket/x.pth'"):
        load_pretrained_backbone(build("backbone", RESNET), "s3://bucket/x.pth")


def test_prefix_of_the_rsb_config_init_cfg() -> None:
    cfg = Config.fromfile(CONFIG_ROOT / "pspnet" / "pspnet_r50-d8-rsb_4xb2-adamw-80k_cityscapes-512x1024.py")
    model = cfg.model.to_dict()
    assert pretrained_source(model).endswith("resnet50_8xb256-rsb-a1-600e_in1k_20211228-20e21305.pth")
    assert pretrained_prefix(model) == "backbone."
    listed = {"backbone": {"init_cfg": [dict(type="Kaiming"), dict(type="Pretrained", checkpoint="a.pth")]}}
    assert pretrained_source(listed) == "a.pth" and pretrained_prefix(listed) is None
    assert pretrained_prefix({"pretrained": "open-mmlab://resnest101", "backbone": {}}) is None


# ----------------------------------------------------------------------------------------------------------
# Converters on synthetic files in the source layouts
# ----------------------------------------------------------------------------------------------------------


def test_msra_hrnet_layout_maps_every_key() -> None:
    backbone = build("backbone", HRNET)
    weights = _random_state(backbone)
    head = _hrnet_classifier()
    kept, dropped = convert_pretrained({**weights, **head}, "open-mmlab://msra/hrnetv2_w18_small")
    assert kept.keys() == weights.keys() and all(kept[k] is weights[k] for k in kept)
    assert dropped.keys() == head.keys()
    assert {k.split(".")[0] + "." for k in dropped} == set(HRNET_CLASSIFIER)


def test_mmcls_layout_keeps_the_backbone_and_drops_conv2() -> None:
    weights = _random_state(build("backbone", MOBILENET_V2))
    kept, dropped = convert_pretrained(_mmcls_file(weights)["state_dict"], "mmcls://mobilenet_v2")
    assert kept.keys() == weights.keys() and all(torch.equal(kept[k], weights[k]) for k in kept)
    assert set(dropped) == {"conv2.conv.weight"} | {f"conv2.bn.{p}" for p in
                                                    ("weight", "bias", "running_mean", "running_var",
                                                     "num_batches_tracked")}


def test_resnest_d2_layout_is_the_backbone_layout() -> None:
    weights = _random_state(build("backbone", RESNEST))
    kept, dropped = convert_pretrained(weights, "open-mmlab://resnest101")
    assert kept.keys() == weights.keys() and not dropped


def test_init_cfg_prefix_selects_the_backbone() -> None:
    weights = _random_state(build("backbone", RESNET))
    state = {**{f"backbone.{k}": v for k, v in weights.items()}, "head.fc.weight": torch.randn(10, 32)}
    kept, dropped = convert_pretrained(state, "https://example.org/resnet50_rsb-20e21305.pth", prefix="backbone")
    assert kept.keys() == weights.keys() and not dropped
    with pytest.raises(KeyError, match="prefix 'neck.'"):
        convert_pretrained(state, "a.pth", prefix="neck.")


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def test_named_hrnet_loads_from_the_cache_without_warnings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path))
    source = build("backbone", HRNET)
    weights = _random_state(source)
    _place_in_cache(tmp_path, EXPECTED_URLS["open-mmlab://msra/hrnetv2_w18_small"], {**weights, **_hrnet_classifier()})
    backbone = build("backbone", HRNET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = load_pretrained_backbone(backbone, "open-mmlab://msra/hrnetv2_w18_small")
    assert result.ok
    assert all(torch.equal(v, weights[k]) for k, v in backbone.state_dict().items())


def test_mmcls_name_downloads_through_a_file_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path / "cache"))
    weights = _random_state(build("backbone", MOBILENET_V2))
    path = tmp_path / "mobilenet_v2_synthetic.pth"
    torch.save(_mmcls_file(weights), path)
    entry = PRETRAINED["mmcls://mobilenet_v2"]
    monkeypatch.setitem(PRETRAINED, "mmcls://mobilenet_v2", PretrainedWeights(path.as_uri(), entry.classifier))
    backbone = build("backbone", MOBILENET_V2)
    result = load_pretrained_backbone(backbone, "mmcls://mobilenet_v2")
    assert result.ok and result.meta == {"epoch": 300}
    assert all(torch.equal(v, weights[k]) for k, v in backbone.state_dict().items())
    assert list((tmp_path / "cache" / "checkpoints").rglob("mobilenet_v2_synthetic.pth"))  # downloaded, cached


def test_missing_num_batches_tracked_keeps_its_value(tmp_path: Path) -> None:
    """The ResNeSt d2 files were saved without ``num_batches_tracked``; mmengine leaves it as it is."""
    weights = {k: v for k, v in _random_state(build("backbone", RESNEST)).items() if "num_batches" not in k}
    path = tmp_path / "resnest_d2.pth"
    torch.save({"meta": {}, "state_dict": weights}, path)
    backbone = build("backbone", RESNEST)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    assert load_pretrained_backbone(backbone, str(path)).ok
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key] if "num_batches" in key else weights[key]), key


def test_extra_keys_are_ignored_with_a_warning(tmp_path: Path) -> None:
    weights = _random_state(build("backbone", RESNET))
    path = tmp_path / "extra.pth"
    torch.save({**weights, "fc.weight": torch.randn(3, 32), "aux.weight": torch.randn(2)}, path)
    backbone = build("backbone", RESNET)
    with pytest.warns(UserWarning, match="aux.weight"):
        result = load_pretrained_backbone(backbone, str(path))
    assert result.unexpected == ["aux.weight"]  # the classifier `fc` goes silently
    assert all(torch.equal(v, weights[k]) for k, v in backbone.state_dict().items())


@pytest.mark.parametrize("defect", ["missing", "shape", "prefix"])
def test_files_that_do_not_fit_load_nothing(tmp_path: Path, defect: str) -> None:
    weights = _random_state(build("backbone", MOBILENET_V2))
    if defect == "missing":
        weights.pop("layer7.0.conv.2.conv.weight")
    elif defect == "shape":
        weights["conv1.conv.weight"] = torch.randn(1, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(weights, path)
    backbone = build("backbone", MOBILENET_V2)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    match = {"missing": "missing keys.*layer7.0.conv.2.conv.weight", "shape": "shape mismatches.*conv1.conv",
             "prefix": "prefix 'backbone.'"}[defect]
    with pytest.raises(RuntimeError, match=match):
        load_pretrained_backbone(backbone, str(path), prefix="backbone." if defect == "prefix" else None)
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
