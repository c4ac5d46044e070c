"""The zoo manifest (``zoo.json``): config name -> weights URL, dataset and published metrics."""

from __future__ import annotations

import fnmatch
import json
from functools import cache
from pathlib import Path

MANIFEST = Path(__file__).with_name("zoo.json")

# Methods whose models are verified exact against MMSegmentation 1.2.2: every component their zoo configs
# build (backbone, backbone_cfg, neck, decode and auxiliary heads) is compared with the oracle's output
# in a conformance test -- its type is named in a file tests/conformance/test_*.py, or a zoo config that
# builds it is. tests/test_zoo_cli.py recomputes this set from those files and fails when it differs.
VERIFIED_METHODS = frozenset({
    "ann", "apcnet", "bisenetv2", "ccnet", "cgnet", "danet", "deeplabv3", "deeplabv3plus", "dmnet", "dnlnet",
    "emanet", "encnet", "fastscnn", "fcn", "gcnet", "hrnet", "mobilenet_v2", "mobilenet_v3", "nonlocal_net",
    "ocrnet", "point_rend", "psanet", "pspnet", "resnest", "sem_fpn", "setr", "swin", "unet", "upernet", "vit",
})
# The metrics a zoo entry is ranked by, in order of preference (retinal vessel sets publish mDice).
PRIMARY_METRICS = ("mIoU", "mDice", "mFscore")
# Characters that make a pattern a shell-style pattern rather than a substring.
_PATTERN_CHARS = frozenset("*?[")


@cache
def manifest() -> dict[str, dict]:
    """All zoo entries by name (read once)."""
    if not MANIFEST.is_file():
        return {}
    return json.loads(MANIFEST.read_text())


def methods() -> list[str]:
    """The zoo's method folders (``'pspnet'``, ``'nonlocal_net'``, ...): the entries' ``method``, sorted."""
    return sorted({entry["method"] for entry in manifest().values()})


def list_models(pattern: str = "*") -> list[str]:
    """Zoo names matching a shell-style pattern (``'deeplabv3plus*'``), sorted."""
    return sorted(name for name in manifest() if fnmatch.fnmatch(name, pattern))


def model_info(name: str) -> dict:
    """The manifest entry of a zoo name; an unknown name raises KeyError with the nearest names."""
    entries = manifest()
    if name not in entries:
        close = nearest_models(name)
        raise KeyError(f"{name!r} is not a zoo model" + (f"; did you mean: {', '.join(close)}" if close else ""))
    return entries[name]


def match_models(pattern: str = "") -> list[str]:
    """Zoo names a pattern selects, sorted: a shell-style pattern when it has ``*``, ``?`` or ``[``
    (``'deeplabv3plus*'``), otherwise every name containing it (``'pspnet'``); ``''`` selects all."""
    if _PATTERN_CHARS & set(pattern):
        return list_models(pattern)
    return sorted(name for name in manifest() if pattern in name)


def nearest_models(word: str, n: int = 5) -> list[str]:
    """Zoo names closest to ``word`` (for "did you mean" hints)."""
    import difflib

    return difflib.get_close_matches(word, manifest(), n=n, cutoff=0.5)


def primary_metric(entry: dict) -> tuple[str, float] | None:
    """The entry's headline published metric, ``('mIoU', 76.55)``; None when it publishes none (a test-only
    config evaluating another model's weights)."""
    metrics = entry.get("metrics") or {}
    return next(((key, metrics[key]) for key in PRIMARY_METRICS if metrics.get(key) is not None), None)

