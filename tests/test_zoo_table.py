"""The README's model-zoo table is generated from the manifest (tools/make_zoo_table.py) and up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from semseg.zoo import VERIFIED_METHODS, manifest, methods

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("make_zoo_table", REPO / "tools" / "make_zoo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _tool()


def _readme_table() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split(TOOL.START, 1)[1].split(TOOL.END, 1)[0].strip("\n")


def test_readme_table_is_up_to_date() -> None:
    assert _readme_table() == TOOL.render(manifest()), (
        "README.md's zoo table is stale: run `python tools/make_zoo_table.py`"
    )
    assert TOOL.main(["--check"]) == 0


def test_one_row_per_method_linking_to_its_configs() -> None:
    rows = [line for line in _readme_table().splitlines() if line.startswith("| [")]
    assert [row.split("]")[0][3:] for row in rows] == methods()
    for method, row in zip(methods(), rows, strict=True):
        assert f"](semseg/configs/{method}) |" in row and (REPO / "semseg" / "configs" / method).is_dir()
        count = sum(1 for entry in manifest().values() if entry["method"] == method)
        assert row.split(" | ")[1] == str(count)


def _entry(method: str, dataset: str, metrics: dict, weights: str | None = "https://x/m-0123abcd.pth") -> dict:
    return {"method": method, "dataset": dataset, "metrics": metrics, "weights": weights}


def test_render_counts_and_takes_the_best_metric_per_dataset() -> None:
    verified = sorted(VERIFIED_METHODS)[0]
    fake = {
        "a1": _entry(verified, "Cityscapes", {"mIoU": 70.0, "mIoU(ms+flip)": 99.0}),
        "a2": _entry(verified, "Cityscapes", {"mIoU": 71.25}),
        "a3": _entry(verified, "ADE20K", {"mIoU": 40.5}),
        "a4": _entry(verified, "Dark Zurich", {}, weights="https://x/m-0123abcd.pth"),
        "b1": _entry("zz_unverified", "DRIVE", {"mDice": 88.4, "Dice": 78.7}),
        "b2": _entry("zz_unverified", "Cityscapes", {}, weights=None),
    }
    lines = TOOL.render(fake).splitlines()
    assert lines[3] == (f"| [{verified}](semseg/configs/{verified}) | 4 | 4 | yes | "
                        "Cityscapes 71.25; ADE20K 40.50 |")  # single scale; datasets by frequency
    assert lines[4] == "| [zz_unverified](semseg/configs/zz_unverified) | 2 | 1 | no | DRIVE 88.40 mDice |"
    assert lines[5] == "| **2 methods** | **6** | **5** | **1 of 2** | |"


def test_a_changed_manifest_makes_the_table_stale() -> None:
    name = next(iter(manifest()))
    changed = {**manifest(), name: {**manifest()[name], "metrics": {"mIoU": 99.99}}}
    assert TOOL.render(changed) != _readme_table()


@pytest.mark.parametrize("readme", ["no markers", f"{TOOL.END}\n{TOOL.START}", f"{TOOL.START}{TOOL.START}{TOOL.END}"])
def test_markers_must_appear_once_in_order(readme: str) -> None:
    with pytest.raises(ValueError, match="zoo-table:start"):
        TOOL.replace_table(readme, "table")


def test_replace_table_keeps_the_rest() -> None:
    readme = f"intro\n{TOOL.START}\nold\n{TOOL.END}\noutro\n"
    assert TOOL.replace_table(readme, "new") == f"intro\n{TOOL.START}\nnew\n{TOOL.END}\noutro\n"
