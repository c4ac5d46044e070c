"""Our zoo configs resolve to exactly what MMSegmentation 1.2.2 resolves for the same names.

Every config under the zoo's method folders (``semseg.zoo.methods()``; the zoo's names and the configs
they inherit from) is compared whole, ``to_dict()`` against ``to_dict()``: model, data pipelines and
loaders, schedule, runtime.
The comparison is strict: a tuple is not a list and 1 is not 1.0. No key is exempt.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from oracle import mmseg_config_dir

from semseg.zoo import methods

pytestmark = pytest.mark.conformance

REPO = Path(__file__).resolve().parents[2]
CONFIG_ROOT = REPO / "semseg" / "configs"
METHODS = methods()
CONFIGS = sorted(f"{p.parent.name}/{p.stem}" for m in METHODS for p in (CONFIG_ROOT / m).glob("*.py"))


def first_difference(ours: Any, theirs: Any, where: str = "cfg") -> str | None:
    """Where two resolved configs first differ (type included), or None when they are identical."""
    if type(ours) is not type(theirs):
        return f"{where}: {ours!r} ({type(ours).__name__}) != {theirs!r} ({type(theirs).__name__})"
    if isinstance(ours, dict):
        if set(ours) != set(theirs):
            return f"{where}: keys only ours {sorted(set(ours) - set(theirs))}, " \
                   f"only theirs {sorted(set(theirs) - set(ours))}"
        return next((d for k in ours if (d := first_difference(ours[k], theirs[k], f"{where}.{k}"))), None)
    if isinstance(ours, (list, tuple)):
        if len(ours) != len(theirs):
            return f"{where}: length {len(ours)} != {len(theirs)}"
        pairs = zip(ours, theirs, strict=True)
        return next((d for i, (a, b) in enumerate(pairs) if (d := first_difference(a, b, f"{where}[{i}]"))), None)
    return None if ours == theirs else f"{where}: {ours!r} != {theirs!r}"


@cache
def oracle_dict(rel: str) -> dict:
    path = mmseg_config_dir() / f"{rel}.py"
    assert path.is_file(), f"MMSegmentation 1.2.2 has no config {rel}"
    from mmengine import Config

    return Config.fromfile(str(path)).to_dict()


def test_first_difference_is_strict():
    assert first_difference({"a": (1, 2)}, {"a": (1, 2)}) is None
    assert "cfg.a" in first_difference({"a": (1, 2)}, {"a": [1, 2]})
    assert "cfg.b[1]" in first_difference({"b": [1, 2]}, {"b": [1, 2.0]})
    assert "only theirs ['c']" in first_difference({}, {"c": 1})


def test_the_zoo_covers_the_manifest():
    manifest = json.loads((REPO / "semseg" / "zoo.json").read_text())
    assert len(CONFIGS) >= len(manifest) >= 190
    assert {entry["config"][:-3] for entry in manifest.values()} <= set(CONFIGS)


@pytest.mark.parametrize("rel", CONFIGS)
def test_mmengine_resolves_ours_as_the_oracle(rel: str):
    from mmengine import Config

    ours = Config.fromfile(str(CONFIG_ROOT / f"{rel}.py")).to_dict()
    difference = first_difference(ours, oracle_dict(rel))
    assert difference is None, difference


@pytest.mark.parametrize("rel", CONFIGS)
def test_semseg_config_resolves_ours_as_the_oracle(rel: str):
    from semseg.config import Config

    ours = Config.fromfile(CONFIG_ROOT / f"{rel}.py").to_dict()
    difference = first_difference(ours, oracle_dict(rel))
    assert difference is None, difference
