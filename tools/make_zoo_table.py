"""Write the README's model-zoo table from the zoo manifest (``semseg/zoo.json``).

One row per method (``semseg.zoo.methods()``): its configs folder, how many models the zoo lists and how
many have published weights, whether the method is verified exact against MMSegmentation, and the best
published single-scale metric per dataset (mIoU; mDice where that is what is published). The table goes
between the markers ``<!-- zoo-table:start -->`` and ``<!-- zoo-table:end -->`` in README.md.

    python tools/make_zoo_table.py [--check]

``--check`` writes nothing and exits 1 when README.md's table is not what this script would write.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START = "<!-- zoo-table:start -->"
END = "<!-- zoo-table:end -->"
CONFIGS = "semseg/configs"


def best_per_dataset(entries: list[dict], dataset_order: list[str]) -> list[str]:
    """``'Cityscapes 80.97'`` per dataset with a published metric (the metric named when not mIoU), in
    ``dataset_order``."""
    from semseg.zoo import primary_metric

    best: dict[str, tuple[str, float]] = {}
    for entry in entries:
        found = primary_metric(entry)
        if found and (entry["dataset"] not in best or found[1] > best[entry["dataset"]][1]):
            best[entry["dataset"]] = found
    cells = []
    for dataset in sorted(best, key=dataset_order.index):
        metric, value = best[dataset]
        cells.append(f"{dataset} {value:.2f}" + ("" if metric == "mIoU" else f" {metric}"))
    return cells


def render(manifest: dict[str, dict]) -> str:
    """The markdown table for a manifest (name -> entry)."""
    from semseg.zoo import VERIFIED_METHODS

    by_method: dict[str, list[dict]] = {}
    for entry in manifest.values():
        by_method.setdefault(entry["method"], []).append(entry)
    counts = Counter(entry["dataset"] for entry in manifest.values())
    dataset_order = sorted(counts, key=lambda dataset: (-counts[dataset], dataset))
    lines = [
        "<!-- generated from semseg/zoo.json by tools/make_zoo_table.py: edit those, not this table -->",
        "| Method | Models | With weights | Verified | Best published mIoU (single scale) per dataset |",
        "| --- | ---: | ---: | :---: | --- |",
    ]
    for method in sorted(by_method):
        entries = by_method[method]
        weighted = sum(1 for entry in entries if entry.get("weights"))
        verified = "yes" if method in VERIFIED_METHODS else "no"
        best = "; ".join(best_per_dataset(entries, dataset_order)) or "-"
        lines.append(f"| [{method}]({CONFIGS}/{method}) | {len(entries)} | {weighted} | {verified} | {best} |")
    weighted = sum(1 for entry in manifest.values() if entry.get("weights"))
    verified = sum(1 for method in by_method if method in VERIFIED_METHODS)
    lines.append(f"| **{len(by_method)} methods** | **{len(manifest)}** | **{weighted}** | "
                 f"**{verified} of {len(by_method)}** | |")
    return "\n".join(lines)


def replace_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``.

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise ValueError(f"README.md needs one {START} line followed by one {END} line")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from semseg.zoo import manifest

    readme = README.read_text()
    updated = replace_table(readme, render(manifest()))
    if args.check:
        if updated != readme:
            print("README.md's zoo table is stale: run python tools/make_zoo_table.py", file=sys.stderr)
            return 1
        return 0
    if updated != readme:
        README.write_text(updated)
        print(f"wrote the zoo table ({len(manifest())} models) to {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
