"""The zoo manifest (``semseg/zoo.json``) against the config files and the published facts."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

from semseg.zoo import methods

REPO = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO / "semseg" / "configs"
MANIFEST = json.loads((REPO / "semseg" / "zoo.json").read_text())
FACTS = REPO / "tools" / "mmseg_zoo_facts.json"  # MMSegmentation 1.2.2's published models, kept in the repo
METHODS = methods()
FIELDS = ["config", "method", "dataset", "weights", "sha256_prefix", "metrics", "batch_size", "architecture",
          "crop_size", "iters", "memory_gb", "notes"]


def _tool():
    spec = importlib.util.spec_from_file_location("make_zoo_manifest", REPO / "tools" / "make_zoo_manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _facts() -> list[dict]:
    return json.loads(FACTS.read_text())


# Folders of semseg's own configs (the built-in synthetic default), which have no published weights.
OWN_FOLDERS = ("_base_", "synthetic")


def _method_configs() -> list[Path]:
    return sorted(p for p in CONFIG_ROOT.glob("*/*.py") if p.parent.name not in OWN_FOLDERS)


def _bases(path: Path) -> list[Path]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_base_" for t in node.targets):
            value = ast.literal_eval(node.value)
            return [(path.parent / b).resolve() for b in ([value] if isinstance(value, str) else value)]
    return []


def test_manifest_is_sorted_with_all_fields():
    assert list(MANIFEST) == sorted(MANIFEST)
    assert len(MANIFEST) >= 190
    for name, entry in MANIFEST.items():
        assert list(entry) == FIELDS, name
        assert isinstance(entry["batch_size"], int) and entry["batch_size"] > 0, name
        assert isinstance(entry["iters"], int) and entry["iters"] > 0, name
        assert len(entry["crop_size"]) == 2 and all(isinstance(v, int) for v in entry["crop_size"]), name


def test_the_zoo_methods_are_the_config_folders():
    """``semseg.zoo.methods()`` (the entries' methods) names every method folder that ships configs."""
    assert sorted({path.parent.name for path in _method_configs()}) == METHODS
    assert {"pspnet", "nonlocal_net", "dnlnet"} <= set(METHODS)


def test_every_entry_has_its_config_file():
    for name, entry in MANIFEST.items():
        assert entry["config"] == f"{entry['method']}/{name}.py"
        assert (CONFIG_ROOT / entry["config"]).is_file(), entry["config"]


def test_every_method_config_is_a_zoo_entry_or_a_parent():
    """A config under a method folder is either in the manifest or inherited by another shipped config
    (e.g. the R-50 Pascal Context config that an R-101 one extends)."""
    configs = _method_configs()
    parents = {base for path in configs for base in _bases(path)}
    for path in configs:
        assert path.stem in MANIFEST or path.resolve() in parents, f"{path} has no manifest entry"
        for base in _bases(path):
            assert base.is_file(), f"{path}: _base_ {base} does not exist"


def test_sha256_prefix_is_the_weights_file_name_suffix():
    for name, entry in MANIFEST.items():
        if entry["weights"] is None:
            assert entry["sha256_prefix"] is None and entry["notes"], name
            continue
        assert re.fullmatch(r"[0-9a-f]{8,64}", entry["sha256_prefix"]), name
        assert entry["weights"].startswith("https://download.openmmlab.com/mmsegmentation/"), name
        assert entry["weights"].endswith(f"-{entry['sha256_prefix']}.pth"), name


def test_crop_and_schedule_match_the_name_or_are_noted():
    """`..._4xb2-80k_cityscapes-512x1024`: 80000 iterations, 512x1024 crops, unless a note says why not."""
    for name, entry in MANIFEST.items():
        iters = int(re.search(r"-(\d+)k_", name).group(1)) * 1000
        named_crop = re.search(r"-(\d+)x(\d+)(?=_|$)", name)  # the first -HxW, not a test scale after it
        crop = [int(v) for v in named_crop.groups()] if named_crop else None
        if entry["iters"] != iters or entry["crop_size"] != crop:
            assert "the name says" in entry["notes"] or "has no '-HxW' crop" in entry["notes"], name


def test_crop_size_and_iters_are_read_from_the_config():
    tool = _tool()
    for name in ("fcn_r50-d8_4xb2-40k_cityscapes-769x769", "upernet_r101_4xb4-160k_ade20k-512x512",
                 "deeplabv3_r101-d8_4xb2-amp-80k_cityscapes-512x1024"):
        entry = MANIFEST[name]
        facts = tool.config_facts(CONFIG_ROOT / entry["config"])
        assert (facts["crop_size"], facts["iters"]) == (entry["crop_size"], entry["iters"])
    assert MANIFEST["fcn_r50-d8_4xb2-40k_cityscapes-769x769"]["crop_size"] == [769, 769]
    assert MANIFEST["deeplabv3_r101-d8_4xb2-amp-80k_cityscapes-512x1024"]["iters"] == 40000


NIGHT_SETS = {"dark-zurich": "Dark Zurich", "night-driving": "Nighttime Driving"}
NIGHT_PARENTS = [f"pspnet_{model}_cityscapes-512x1024" for model in ("r50-d8_4xb2-40k", "r50-d8_4xb2-80k",
                                                                     "r101-d8_4xb2-40k", "r101b-d8_4xb2-80k")]


@pytest.mark.parametrize("night", sorted(NIGHT_SETS))
@pytest.mark.parametrize("parent", NIGHT_PARENTS)
def test_night_time_configs_carry_their_cityscapes_weights(parent, night):
    """PSPNet's night-time configs test a Cityscapes model on Dark Zurich / Nighttime Driving: the parent's
    weights and training facts, the night set's dataset name, no metrics of their own, and a note."""
    entry, base = MANIFEST[f"{parent}_{night}-1920x1080"], MANIFEST[parent]
    assert base["dataset"] == "Cityscapes" and base["metrics"]
    assert entry["dataset"] == NIGHT_SETS[night]
    assert entry["metrics"] == {}
    assert (entry["weights"], entry["sha256_prefix"]) == (base["weights"], base["sha256_prefix"])
    for key in ("method", "batch_size", "architecture", "crop_size", "iters", "memory_gb"):
        assert entry[key] == base[key], key
    assert entry["notes"] == (f"evaluates the weights of {parent} (trained on Cityscapes); "
                              "MMSegmentation publishes no separate result")


def test_only_test_data_changes_make_a_retest_entry(tmp_path):
    """A config on a zoo model's `_base_` enters as a re-test only when nothing but the test data changes."""
    tool = _tool()
    name = "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024"
    (tmp_path / "pspnet").mkdir()
    (tmp_path / "_base_").symlink_to(CONFIG_ROOT / "_base_")
    for stem in (name, f"{name}_dark-zurich-1920x1080"):
        (tmp_path / "pspnet" / f"{stem}.py").write_text((CONFIG_ROOT / "pspnet" / f"{stem}.py").read_text())
    retrained = tmp_path / "pspnet" / f"{name}_night-driving-1920x1080.py"
    retrained.write_text((CONFIG_ROOT / "pspnet" / f"{name}_night-driving-1920x1080.py").read_text()
                         + "\ntrain_cfg = dict(max_iters=20000)\n")
    url = "https://download.openmmlab.com/mmsegmentation/v0.5/pspnet/x/x_20200605_003338-2966598c.pth"
    fact = {"name": name, "method_folder": "pspnet", "dataset": "Cityscapes", "metrics": {"mIoU": 77.85},
            "batch_size": 8, "architecture": ["R-50-D8", "PSPNet"], "memory_gb": 6.1, "weights": url}
    built = tool.build([fact], tmp_path)
    assert list(built) == [name, f"{name}_dark-zurich-1920x1080"]
    assert built[f"{name}_dark-zurich-1920x1080"]["sha256_prefix"] == "2966598c"
    (tmp_path / "pspnet" / f"{name}_dark-zurich-1920x1080.py").write_text(
        f"_base_ = './{name}.py'\ntest_dataloader = dict(dataset=dict(type='ADE20KDataset'))\n")
    with pytest.raises(KeyError, match="ADE20KDataset"):
        tool.build([fact], tmp_path)


def test_sha256_prefix_rejects_a_url_without_hash():
    tool = _tool()
    assert tool.sha256_prefix("file:///w/pspnet_20200604_192608-efe53f0d.pth") == "efe53f0d"
    with pytest.raises(ValueError, match="sha256"):
        tool.sha256_prefix("file:///w/pspnet_latest.pth")


def test_misspelt_weights_host_is_corrected_with_a_note():
    tool = _tool()
    url, note = tool.fix_url("https://download.oz1z1penmmlab.com/mmsegmentation/v0.5/a/a_1-dba412fa.pth")
    assert url == "https://download.openmmlab.com/mmsegmentation/v0.5/a/a_1-dba412fa.pth"
    assert "oz1z1" in note
    assert tool.fix_url(url) == (url, None)
    entry = MANIFEST["pspnet_r101-d8_4xb2-80k_cityscapes-769x769"]
    assert entry["weights"].startswith("https://download.openmmlab.com/") and "corrected" in entry["notes"]


def test_all_published_names_of_the_zoo_methods_are_present():
    names = {fact["name"] for fact in _facts() if fact["method_folder"] in METHODS}
    assert len(names) >= 190
    assert sorted(names - set(MANIFEST)) == []


def test_every_published_weights_file_is_in_the_manifest_once():
    """Duplicated names in the metafile: each weights file ends up under the config it was trained with
    (and again under the configs that only re-test that model, e.g. on Dark Zurich)."""
    tool = _tool()
    urls = [tool.fix_url(fact["weights"])[0] for fact in _facts() if fact["method_folder"] in METHODS]
    trained = {name: entry for name, entry in MANIFEST.items()
               if entry["weights"] and not entry["notes"].startswith("evaluates the weights of")}
    assert len(trained) < len([entry for entry in MANIFEST.values() if entry["weights"]])
    assert sorted(entry["weights"] for entry in trained.values()) == sorted(set(urls))
    by_url = {entry["weights"]: name for name, entry in trained.items()}
    sibling = by_url[next(u for u in urls if "/pspnet_r50-d32_512x1024_80k_cityscapes/" in u)]
    assert sibling == "pspnet_r50-d32_4xb2-80k_cityscapes-512x1024"
    assert "pspnet_r50-d32_4xb2-80k_cityscapes-512x1024" in MANIFEST["pspnet_r50b-d32_4xb2-80k_cityscapes-512x1024"]["notes"]


def test_manifest_is_what_the_tool_writes():
    tool = _tool()
    assert tool.DEFAULT_FACTS == FACTS
    built = tool.build(_facts(), CONFIG_ROOT)
    assert tool.render(built) == (REPO / "semseg" / "zoo.json").read_text(), "run tools/make_zoo_manifest.py"


def test_manifest_only_lists_configs_that_exist(tmp_path):
    """The manifest grows with the zoo: of two published models, only the one whose config exists enters."""
    tool = _tool()
    name = "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024"
    (tmp_path / "pspnet").mkdir()
    (tmp_path / "pspnet" / f"{name}.py").write_text((CONFIG_ROOT / "pspnet" / f"{name}.py").read_text())
    (tmp_path / "_base_").symlink_to(CONFIG_ROOT / "_base_")
    fact = {"name": name, "method_folder": "pspnet", "dataset": "Cityscapes", "metrics": {"mIoU": 77.85},
            "batch_size": 8, "architecture": ["R-50-D8", "PSPNet"], "memory_gb": 6.1,
            "weights": "https://download.openmmlab.com/mmsegmentation/v0.5/pspnet/x/x_20200605_003338-2966598c.pth"}
    absent = {**fact, "name": "pspnet_r101-d8_4xb2-40k_cityscapes-512x1024"}
    built = tool.build([absent, fact], tmp_path)
    assert list(built) == [name]
    assert built[name]["sha256_prefix"] == "2966598c"
    assert built[name]["crop_size"] == [512, 1024] and built[name]["iters"] == 40000
    assert built[name]["notes"] == ""
