"""Write ``semseg/zoo.json``: one entry per zoo config that semseg ships.

Reads MMSegmentation 1.2.2's published model facts (``tools/mmseg_zoo_facts.json`` by default, a JSON list:
name, method folder, dataset, metrics, batch size, architecture, memory, weights URL) and the configs under
``semseg/configs``; a model enters the manifest only when its config file exists, so the manifest grows
with the zoo. Crop size and iteration count come from the config itself. A shipped config that only tests
a zoo model on another dataset (its ``_base_``, changed in nothing but the test data: PSPNet on Dark
Zurich) enters with that model's weights and no metrics of its own.

    python tools/make_zoo_manifest.py [FACTS_JSON] [--check]

``--check`` writes nothing and exits 1 when ``semseg/zoo.json`` is not what this script would write.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FACTS = Path(__file__).with_name("mmseg_zoo_facts.json")
CONFIG_ROOT = REPO / "semseg" / "configs"
MANIFEST = REPO / "semseg" / "zoo.json"

# The weights file name ends with the first hex digits of the file's SHA-256: `..._20200604_192608-efe53f0d.pth`.
HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.pth$")

# Metafile entries whose weights belong to a sibling config, not to the name they are listed under
# (weights folder -> the config those weights were trained with). Their facts move to the sibling.
SIBLING_WEIGHTS = {
    "pspnet_r50-d32_512x1024_80k_cityscapes": "pspnet_r50-d32_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus_r101-d8_512x512_80k_ade20k": "deeplabv3plus_r101-d8_4xb4-80k_ade20k-512x512",
    "deeplabv3plus_r101-d8_480x480_40k_pascal_context": "deeplabv3plus_r101-d8_4xb4-40k_pascal-context-480x480",
    "deeplabv3plus_r101-d8_480x480_80k_pascal_context": "deeplabv3plus_r101-d8_4xb4-80k_pascal-context-480x480",
    "ocrnet_hr18s_512x512_160k_ade20k": "ocrnet_hr18s_4xb4-160k_ade20k-512x512",
    "ocrnet_hr18_512x512_160k_ade20k": "ocrnet_hr18_4xb4-160k_ade20k-512x512",
}
# Dataset types -> the manifest's dataset names, for facts whose dataset field is not a dataset.
DATASET_NAMES = {"CityscapesDataset": "Cityscapes"}
# Configs that, as MMSegmentation 1.2.2's, do not build what their name says (semseg's resolve to the same
# dicts): a note for the user.
CONFIG_NOTES = {
    "fpn_r101_4xb4-160k_ade20k-512x512": "MMSegmentation 1.2.2's config assigns `model` twice, and the second "
    "assignment drops depth=101: it builds a ResNet-50, so the published R-101 weights do not load strictly",
    "bisenetv2_fcn_4xb4-ohem-160k_cityscapes-1024x1024": "MMSegmentation 1.2.2's config puts its OHEM heads "
    "under `models` (a typo), so the model trains without OHEM sampling, like the plain config",
}
# Misspelt hosts in the metafile's weights URLs -> the real host.
HOST_FIXES = {"download.oz1z1penmmlab.com": "download.openmmlab.com"}
# Names whose only metafile entry carries a sibling's weights: no weights of their own are published.
OWN_ARCHITECTURE = {
    "deeplabv3plus_r50-d8_4xb4-40k_pascal-context-480x480": ["R-50-D8", "DeepLabV3+"],
    "deeplabv3plus_r50-d8_4xb4-80k_pascal-context-480x480": ["R-50-D8", "DeepLabV3+"],
}

# Test-only configs: the test dataset type -> the manifest's dataset name. A config whose single `_base_` is
# a zoo model and which differs from it only in these keys evaluates that model's weights on the dataset.
TEST_DATASETS = {"DarkZurichDataset": "Dark Zurich", "NightDrivingDataset": "Nighttime Driving"}
TEST_ONLY_KEYS = {"test_pipeline", "test_dataloader"}


def fix_url(url: str) -> tuple[str, str | None]:
    """The weights URL with a misspelt host corrected, and a note saying so (None when nothing changed)."""
    for wrong, right in HOST_FIXES.items():
        if f"//{wrong}/" in url:
            return url.replace(f"//{wrong}/", f"//{right}/"), f"the metafile's weights URL has host {wrong}; corrected"
    return url, None


def sha256_prefix(url: str) -> str:
    """The hex digits a weights file name ends with (the start of the file's SHA-256)."""
    match = HASH_SUFFIX.search(url)
    if match is None:
        raise ValueError(f"weights URL {url!r} does not end with '-<sha256 prefix>.pth'")
    return match.group(1)


def weights_folder(url: str) -> str:
    """The folder a weights file sits in (MMSegmentation 0.x's name of the model)."""
    return url.rstrip("/").split("/")[-2]


def config_facts(path: Path) -> dict[str, Any]:
    """Crop size [h, w] and iteration count from a config: the train pipeline's RandomCrop (else the
    data preprocessor's size) and ``train_cfg.max_iters``; notes where these disagree with the name
    (``..._4xb2-80k_cityscapes-512x1024``)."""
    from semseg.config import Config

    cfg = Config.fromfile(path).to_dict()
    crops = [t["crop_size"] for t in cfg.get("train_pipeline", []) if t.get("type") == "RandomCrop"]
    pad = cfg["model"]["data_preprocessor"].get("size")
    crop = [int(v) for v in (crops[0] if crops else pad)]
    iters = int(cfg["train_cfg"]["max_iters"])
    notes = []
    named_iters = re.search(r"-(\d+)k_", path.stem)
    if named_iters and int(named_iters.group(1)) * 1000 != iters:
        notes.append(f"the name says {named_iters.group(1)}k iterations but the config, as MMSegmentation "
                     f"1.2.2's, trains {iters} iterations")
    # The first `-HxW` is the training crop; a test-only config adds its test scale after it
    # (`..._cityscapes-512x1024_dark-zurich-1920x1080`).
    named_crop = re.search(r"-(\d+)x(\d+)(?=_|$)", path.stem)
    if named_crop is None:
        notes.append(f"the name, as MMSegmentation 1.2.2's, has no '-HxW' crop; the config crops {crop[0]}x{crop[1]}")
    elif [int(named_crop.group(1)), int(named_crop.group(2))] != crop:
        notes.append(f"the name says {named_crop.group(1)}x{named_crop.group(2)} but the config, as "
                     f"MMSegmentation 1.2.2's, crops {crop[0]}x{crop[1]} in training"
                     + (f" and pads batches to {pad[0]}x{pad[1]}" if pad and list(pad) != crop else ""))
    dataset = DATASET_NAMES.get(cfg.get("train_dataloader", {}).get("dataset", {}).get("type"))
    return {"crop_size": crop, "iters": iters, "notes": notes, "config_dataset": dataset}


def _entry(fact: dict, notes: list[str], config: str) -> dict[str, Any]:
    url = fact["weights"]
    return {
        "config": config,
        "method": fact["method_folder"],
        "dataset": fact["dataset"],
        "weights": url,
        "sha256_prefix": sha256_prefix(url) if url else None,
        "metrics": dict(fact["metrics"]),
        "batch_size": fact["batch_size"],
        "architecture": list(fact["architecture"]),
        "memory_gb": fact["memory_gb"],
        "notes": "; ".join(notes),
    }


def single_base(path: Path) -> Path | None:
    """The file a config's ``_base_`` names when it names exactly one (``_base_ = './parent.py'``)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_base_" for t in node.targets):
            value = ast.literal_eval(node.value)
            return (path.parent / value).resolve() if isinstance(value, str) else None
    return None


def retest_entry(path: Path, parent: dict[str, Any], config_root: Path) -> dict[str, Any] | None:
    """The manifest entry of a config that only re-tests its ``_base_`` zoo model (entry ``parent``) on
    another dataset, or None when it changes anything besides ``test_pipeline`` / ``test_dataloader``."""
    from semseg.config import Config

    ours = Config.fromfile(path).to_dict()
    theirs = Config.fromfile(config_root / parent["config"]).to_dict()
    if not {key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key)} <= TEST_ONLY_KEYS:
        return None
    test_type = ours["test_dataloader"]["dataset"]["type"]
    if test_type not in TEST_DATASETS:
        raise KeyError(f"{path}: test-only config on {test_type}, which TEST_DATASETS does not name")
    parent_name = Path(parent["config"]).stem
    from_config = config_facts(path)
    from_config.pop("config_dataset")
    notes = [f"evaluates the weights of {parent_name} (trained on {parent['dataset']}); MMSegmentation "
             "publishes no separate result"] + from_config.pop("notes")
    return {**parent, "config": f"{parent['method']}/{path.stem}.py", "dataset": TEST_DATASETS[test_type],
            "metrics": {}, **from_config, "notes": "; ".join(notes)}


def build(facts: list[dict], config_root: Path = CONFIG_ROOT) -> dict[str, dict]:
    """The manifest (name -> entry, sorted by name) for every fact whose config exists under
    ``config_root``."""
    own: dict[str, dict] = {}  # name -> the fact whose weights are that model's
    moved: dict[str, list[dict]] = {}  # name -> facts listed under it whose weights are a sibling's
    for fact in facts:
        url, fixed = fix_url(fact["weights"])
        if fixed:
            fact = {**fact, "weights": url, "note": "; ".join(filter(None, [fact.get("note"), fixed]))}
        sibling = SIBLING_WEIGHTS.get(weights_folder(fact["weights"]))
        if sibling is not None and sibling != fact["name"]:
            moved.setdefault(fact["name"], []).append(fact)
            own.setdefault(sibling, {**fact, "name": sibling, "listed_as": fact["name"]})
        else:
            own[fact["name"]] = fact

    manifest = {}
    for name in sorted(set(own) | set(moved)):
        fact = own.get(name)
        template = fact if fact is not None else moved[name][0]
        config = f"{template['method_folder']}/{name}.py"
        if not (config_root / config).is_file():
            continue
        notes = [template["note"]] if template.get("note") else []
        if name in CONFIG_NOTES:
            notes.append(CONFIG_NOTES[name])
        if fact is None:  # only a sibling's weights are published under this name
            fact = {**template, "weights": None, "metrics": {}, "memory_gb": None,
                    "architecture": OWN_ARCHITECTURE.get(name, template["architecture"])}
            notes.append("no weights of its own are published")
        if "listed_as" in fact:
            notes.append(f"MMSegmentation's metafile lists these weights under {fact['listed_as']}; "
                         f"their file name says they are this model's")
        for other in moved.get(name, []):
            notes.append(f"MMSegmentation's metafile also lists {other['weights']} under this name; "
                         f"those weights belong to {SIBLING_WEIGHTS[weights_folder(other['weights'])]}")
        from_config = config_facts(config_root / config)
        config_dataset = from_config.pop("config_dataset")
        if fact["dataset"].startswith("#") and config_dataset:  # a README heading read as the dataset
            notes.append(f"the metafile's dataset field reads {fact['dataset']!r}; the config trains on "
                         f"{config_dataset}")
            fact = {**fact, "dataset": config_dataset}
        entry = _entry(fact, notes + from_config.pop("notes"), config)
        entry.update(from_config)
        manifest[name] = {key: entry[key] for key in (
            "config", "method", "dataset", "weights", "sha256_prefix", "metrics", "batch_size",
            "architecture", "crop_size", "iters", "memory_gb", "notes")}

    by_file = {(config_root / entry["config"]).resolve(): entry for entry in manifest.values()}
    for path in sorted(config_root.glob("*/*.py")):
        parent = by_file.get(single_base(path))
        if path.stem not in manifest and parent is not None:
            entry = retest_entry(path, parent, config_root)
            if entry is not None:
                manifest[path.stem] = entry
    return dict(sorted(manifest.items()))


def render(manifest: dict[str, dict]) -> str:
    """The manifest as it is written to disk (stable: sorted names, two-space indent)."""
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("facts", nargs="?", type=Path, default=DEFAULT_FACTS, help="mmseg_zoo_facts.json")
    parser.add_argument("--check", action="store_true", help="compare with semseg/zoo.json, write nothing")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    text = render(build(json.loads(args.facts.read_text())))
    if args.check:
        current = MANIFEST.read_text() if MANIFEST.is_file() else ""
        if current != text:
            print(f"{MANIFEST} is out of date: run python tools/make_zoo_manifest.py", file=sys.stderr)
            return 1
        return 0
    MANIFEST.write_text(text)
    print(f"wrote {len(json.loads(text))} entries to {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
