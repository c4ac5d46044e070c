"""Conformance tests against MMSegmentation 1.2.2 (the oracle): every test in this folder is marked
``conformance`` (``tests/conftest.py`` decides what a missing oracle means).

This folder has no ``__init__.py``: pytest puts it on ``sys.path``, so tests write ``from oracle import ...``
(a package ``tests`` would clash with the one mmsegmentation installs into site-packages). Test file names
here must therefore differ from those elsewhere under ``tests/``.
"""

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.conformance)
