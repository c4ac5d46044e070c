"""Guards on registration and on the test suite itself: every table entry imports, every head and
backbone has a unit case and a conformance case, and ``make test`` cannot pass without the oracle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from semseg.build import BACKBONES, HEADS, TABLES, lookup

TESTS = Path(__file__).parent
REPO = TESTS.parent


@pytest.mark.parametrize(("kind", "name"), [(kind, name) for kind, table in TABLES.items() for name in table])
def test_every_table_entry_imports(kind: str, name: str) -> None:
    assert callable(lookup(kind, name))


@cache
def names_used(path: Path) -> frozenset[str]:
    """The string constants and the names a test file uses (``type="PSPHead"`` or ``PSPHead(...)``);
    a type name in a comment or docstring does not count."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr)}
    strings = {node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}
    return frozenset(strings | {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)})


def files_naming(type_name: str, conformance: bool) -> list[str]:
    files = (TESTS / "conformance").glob("test_*.py") if conformance else TESTS.glob("test_*.py")
    return [p.name for p in files if p.name != Path(__file__).name and type_name in names_used(p)]


@pytest.mark.parametrize("type_name", sorted({**HEADS, **BACKBONES}))
def test_every_head_and_backbone_has_unit_and_conformance_cases(type_name: str) -> None:
    assert files_naming(type_name, conformance=False), f"no unit test under tests/ builds {type_name!r}"
    assert files_naming(type_name, conformance=True), f"no conformance test compares {type_name!r} with the oracle"


def test_the_guard_reads_code_not_comments(tmp_path: Path) -> None:
    path = tmp_path / "test_x.py"
    path.write_text('"""PSPHead in a docstring."""\n# "FCNHead" in a comment\nCFG = dict(type="UPerHead")\n'
                    'head = ASPPHead()\n')
    assert names_used(path) == {"dict", "CFG", "UPerHead", "head", "ASPPHead"}


@pytest.mark.parametrize("required", [True, False])
def test_a_broken_oracle_fails_the_run_where_it_is_required(tmp_path: Path, required: bool) -> None:
    fake = tmp_path / "site" / "mmseg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mmseg broken on purpose')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SEMSEG_REQUIRE_ORACLE")}
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), str(REPO)])
    if required:
        env["SEMSEG_REQUIRE_ORACLE"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/conformance/test_oracle_harness.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert "mmseg broken on purpose" in output
    if required:
        assert result.returncode != 0
    else:
        assert result.returncode == 0 and "skipped" in output and "passed" not in output
