"""Test-wide settings: conformance tests (marked ``conformance``) need the oracle, MMSegmentation 1.2.2.

Where ``SEMSEG_REQUIRE_ORACLE`` or ``CI`` is set (``make test`` sets the first), a missing or broken oracle
stops the run with its import error; elsewhere the conformance tests are skipped with that reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "conformance"))  # the oracle harness, importable as `oracle`

from oracle import install_ext_stub, oracle_problem  # noqa: E402

install_ext_stub()  # before any test module imports mmseg


def oracle_required() -> bool:
    return bool(os.environ.get("SEMSEG_REQUIRE_ORACLE") or os.environ.get("CI"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    conformance = [item for item in items if item.get_closest_marker("conformance")]
    problem = oracle_problem() if conformance else None
    if problem is None:
        return
    if oracle_required():
        raise pytest.UsageError(f"the conformance tests need MMSegmentation 1.2.2 (the 'conformance' extra), "
                                f"which does not import: {problem}")
    skip = pytest.mark.skip(reason=f"MMSegmentation 1.2.2 does not import: {problem}")
    for item in conformance:
        item.add_marker(skip)
