"""``semseg zoo``: pattern matching, the listing's columns, one entry in full, hints for no match, and the
verified-methods list against the conformance tests present."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest

from semseg.cli import zoo as zoo_cli
from semseg.config import CONFIG_ROOT, Config
from semseg.zoo import VERIFIED_METHODS, manifest, match_models, methods, primary_metric

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO / "tests" / "conformance"
PSP = "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024"
UNET = "unet-s5-d16_fcn_4xb4-40k_drive-64x64"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="semseg")
    zoo_cli.register(root.add_subparsers(dest="command"))
    return root


def zoo(*argv: str) -> int:
    args = parser().parse_args(["zoo", *argv])
    return args.func(args)


def test_bare_word_is_a_substring_and_wildcards_a_shell_pattern() -> None:
    names = match_models("pspnet")
    assert PSP in names and names == sorted(n for n in manifest() if "pspnet" in n)
    assert any(not n.startswith("pspnet") for n in names)  # mobilenet-v2-d8_pspnet_..., resnest_..._pspnet_...
    assert match_models("pspnet*") == sorted(n for n in names if n.startswith("pspnet"))
    assert match_models("psp?et_r50-d8_4xb2-40k_cityscapes-512x1024") == [PSP]
    assert match_models("") == sorted(manifest())


def test_listing_rows_have_the_published_facts(capsys) -> None:
    assert zoo("pspnet_r50-d8_4xb2-40k") == 0
    out, err = capsys.readouterr()
    rows = [line.split() for line in out.splitlines()]
    assert [row[0] for row in rows] == match_models("pspnet_r50-d8_4xb2-40k")
    row = next(row for row in rows if row[0] == PSP)
    entry = manifest()[PSP]
    assert row[1:] == ["Cityscapes", "512x1024", "40k", "mIoU", f"{entry['metrics']['mIoU']:.2f}", "yes",
                       entry["weights"]]
    assert err.splitlines()[0].split() == zoo_cli.HEADER and err.splitlines()[-1] == f"{len(rows)} models"


def test_listing_shows_mdice_where_that_is_published(capsys) -> None:
    assert primary_metric(manifest()[UNET])[0] == "mDice"
    assert zoo(UNET[:-2] + "*") == 0  # a pattern, so the listing rather than the full entry
    row = capsys.readouterr().out.split()
    assert row[:6] == [UNET, "DRIVE", "64x64", "40k", "mDice", f"{manifest()[UNET]['metrics']['mDice']:.2f}"]


def test_exact_name_shows_the_entry_in_full(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path))
    assert zoo(PSP) == 0
    out = capsys.readouterr().out
    entry = manifest()[PSP]
    for fact in (entry["weights"], entry["sha256_prefix"], "Cityscapes", "512x1024", "40k iterations",
                 f"batch size {entry['batch_size']}", f"mIoU(ms+flip) {entry['metrics']['mIoU(ms+flip)']}",
                 str(REPO / "semseg" / "configs" / entry["config"]), "verified      yes",
                 f"semseg download {PSP}", "checkpoint='zoo'"):
        assert fact in out, fact
    cached = tmp_path / "checkpoints" / entry["weights"].rsplit("/", 1)[1]
    assert f"{cached} (not downloaded)" in out


def test_json_lists_the_manifest_entries(capsys) -> None:
    assert zoo("--json", "fcn_r50-d8_4xb2-40k") == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries == {name: manifest()[name] for name in match_models("fcn_r50-d8_4xb2-40k")}


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [("pspnett", "Nearest methods: pspnet"),
     ("pspnet_r50-d8_4xb2-40k_cityscape-512x1024", f"Nearest names: {PSP}"),
     ("psp*r50*cityscapes", "'*psp*r50*cityscapes*' matches")],
)
def test_no_match_fails_with_a_hint(capsys, pattern: str, hint: str) -> None:
    assert zoo(pattern) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"0 models match {pattern!r}")
    assert hint in err and "shell pattern" in err and "Methods: ann," in err


def test_help_has_examples_and_describes_every_argument() -> None:
    sub = parser()._subparsers._group_actions[0].choices["zoo"]
    assert "examples:" in sub.format_help() and "semseg zoo pspnet" in sub.format_help()
    assert all(action.help for action in sub._actions)


# ----------------------------------------------------------------------------------------------------------
# VERIFIED_METHODS is what the conformance tests present cover
# ----------------------------------------------------------------------------------------------------------


def _component_types(model: dict) -> set[str]:
    """Types of the modules a model config builds: backbone (and its backbone_cfg), neck, heads."""
    found: set[str] = set()

    def add(cfg) -> None:
        if isinstance(cfg, (list, tuple)):
            for item in cfg:
                add(item)
        elif isinstance(cfg, dict) and "type" in cfg:
            found.add(cfg["type"])
            add(cfg.get("backbone_cfg"))

    for key in ("backbone", "neck", "decode_head", "auxiliary_head"):
        add(model.get(key))
    return found


def _conformance_strings() -> set[str]:
    strings = set()
    for path in CONFORMANCE.glob("test_*.py"):
        strings |= {node.value for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return strings


def test_verified_methods_are_those_the_conformance_tests_cover() -> None:
    """A method is verified when every component its zoo configs build is named in a conformance test file
    (as a type, or through a zoo config the file builds whole)."""
    types = {name: _component_types(Config.fromfile(CONFIG_ROOT / entry["config"]).to_dict()["model"])
             for name, entry in manifest().items()}
    strings = _conformance_strings()
    covered = strings.union(*(types[name] for name in manifest() if name in strings))
    uncovered = {method: set() for method in methods()}
    for name, entry in manifest().items():
        uncovered[entry["method"]] |= types[name] - covered
    derived = {method for method, missing in uncovered.items() if not missing}
    assert set(VERIFIED_METHODS) == derived, {m: sorted(t) for m, t in uncovered.items() if t}
