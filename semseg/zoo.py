"""The zoo manifest (``zoo.json``): config name -> weights URL, dataset and published metrics."""

from __future__ import annotations

import fnmatch
import json
from functools import cache
from pathlib import Path

MANIFEST = Path(__file__).with_name("zoo.json")


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
        import difflib

        close = difflib.get_close_matches(name, entries, n=5, cutoff=0.5)
        raise KeyError(f"{name!r} is not a zoo model" + (f"; did you mean: {', '.join(close)}" if close else ""))
    return entries[name]
