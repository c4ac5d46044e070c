"""Every zoo model's state-dict keys and shapes equal the oracle's (recorded once by
tools/dump_oracle_keys.py into tests/conformance/fixtures/oracle_keys.json.gz)."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

import pytest
import torch

from semseg.build import build
from semseg.config import load_config
from semseg.zoo import manifest, methods

FIXTURE = Path(__file__).parent / "conformance" / "fixtures" / "oracle_keys.json.gz"


@cache
def oracle_keys() -> dict:
    with gzip.open(FIXTURE, "rt") as f:
        return json.load(f)


def zoo_names() -> list[str]:
    return sorted(oracle_keys()["names"])


def test_fixture_covers_the_zoo():
    """Recorded for every method of the zoo (``semseg.zoo.methods()``): every zoo name is in the fixture."""
    assert sorted(oracle_keys()["methods"]) == methods()
    assert sorted(set(manifest()) - set(zoo_names())) == []


@pytest.mark.parametrize("name", zoo_names())
def test_keys_and_shapes_match_oracle(name):
    fixture = oracle_keys()
    expected = fixture["models"][str(fixture["names"][name])]
    with torch.device("meta"):
        model = build("segmentor", load_config(name).model.to_dict())
    got = {key: list(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {key: (got[key], shape) for key, shape in expected.items() if got[key] != shape}
    assert not wrong
