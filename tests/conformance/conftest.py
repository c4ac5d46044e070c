"""Conformance tests against MMSegmentation 1.2.2 (the oracle).

The ``mmcv._ext`` stand-in goes in at import, before any test module imports mmseg. Every test in this
folder gets the ``conformance`` marker and is skipped when the oracle is not installed. This folder has no
``__init__.py``: pytest puts it on ``sys.path``, so tests write ``from oracle import ...`` (a package
``tests`` would clash with the one mmsegmentation installs into site-packages). Test file names here must
therefore differ from those elsewhere under ``tests/``.
"""

import os
from pathlib import Path

import pytest
from oracle import install_ext_stub, oracle_available

install_ext_stub()

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CI") and not oracle_available():
        raise pytest.UsageError("CI must run the conformance suite: install the 'conformance' extra "
                                "(MMSegmentation 1.2.2, mmcv-lite 2.1.0, mmengine)")
    skip = None if oracle_available() else pytest.mark.skip(reason="MMSegmentation 1.2.2 is not installed")
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.conformance)
            if skip is not None:
                item.add_marker(skip)
