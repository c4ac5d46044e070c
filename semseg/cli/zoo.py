"""``semseg zoo [PATTERN]``: the zoo's models with their published facts; ``semseg zoo NAME``: one in full."""

from __future__ import annotations

import argparse
import difflib
import json
import sys

EPILOG = """\
examples:
  semseg zoo pspnet                       # every name containing 'pspnet'
  semseg zoo 'deeplabv3plus_r101*ade20k*' # a shell-style pattern (quote it)
  semseg zoo pspnet_r50-d8_4xb2-40k_cityscapes-512x1024   # one model in full

Rows go to stdout (name first, so `semseg zoo X | cut -d' ' -f1` lists names); the header and the count
go to stderr. 'verified' means the method's components are compared with MMSegmentation 1.2.2's in a
conformance test (outputs equal within 1e-4).
"""


def schedule(iters: int | None) -> str:
    """``40000`` -> ``'40k'`` (the configs' own spelling)."""
    if not iters:
        return "-"
    return f"{iters // 1000}k" if iters % 1000 == 0 else str(iters)


def crop(entry: dict) -> str:
    size = entry.get("crop_size")
    return "x".join(map(str, size)) if size else "-"


def metric_text(entry: dict) -> str:
    from semseg.zoo import primary_metric

    found = primary_metric(entry)
    return f"{found[0]} {found[1]:.2f}" if found else "-"


def rows(names: list[str]) -> list[list[str]]:
    """One row per name: name, dataset, crop, schedule, metric, verified, weights URL."""
    from semseg.zoo import VERIFIED_METHODS, manifest

    entries = manifest()
    return [
        [name, entries[name]["dataset"], crop(entries[name]), schedule(entries[name].get("iters")),
         metric_text(entries[name]), "yes" if entries[name]["method"] in VERIFIED_METHODS else "no",
         entries[name].get("weights") or "(no weights published)"]
        for name in names
    ]


HEADER = ["name", "dataset", "crop", "schedule", "published", "verified", "weights"]


def print_table(names: list[str]) -> None:
    """The header (stderr) and one aligned row per model (stdout); the URL column is not padded."""
    table = rows(names)
    widths = [max(len(row[i]) for row in [HEADER, *table]) for i in range(len(HEADER) - 1)]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]

    print(line(HEADER), file=sys.stderr, flush=True)
    for row in table:
        print(line(row))
    sys.stdout.flush()
    print(f"{len(names)} models", file=sys.stderr)


def describe(name: str) -> str:
    """One zoo entry in full: facts, every published metric, weights (and whether cached), notes, usage."""
    from semseg.config import CONFIG_ROOT
    from semseg.engine.checkpoint import cached_path
    from semseg.zoo import VERIFIED_METHODS, model_info

    entry = model_info(name)
    weights = entry.get("weights")
    metrics = ", ".join(f"{key} {value}" for key, value in (entry.get("metrics") or {}).items()) or "-"
    verified = entry["method"] in VERIFIED_METHODS
    lines = [
        f"name          {name}",
        f"method        {entry['method']} ({' + '.join(entry.get('architecture') or []) or '-'})",
        f"config        {CONFIG_ROOT / entry['config']}",
        f"dataset       {entry['dataset']}",
        f"crop          {crop(entry)}",
        f"schedule      {schedule(entry.get('iters'))} iterations, batch size {entry.get('batch_size') or '-'}",
        f"published     {metrics}",
        f"memory        {entry['memory_gb']} GB (training, per GPU)" if entry.get("memory_gb") else "memory        -",
        "verified      " + ("yes: compared with MMSegmentation 1.2.2 in the conformance tests" if verified
                            else "no: no conformance test covers this method yet"),
    ]
    if weights:
        cached = cached_path(weights)
        lines += [
            f"weights       {weights}",
            f"sha256        {entry.get('sha256_prefix') or '-'}...",
            f"cached        {cached} ({'present' if cached.is_file() else 'not downloaded'})",
        ]
    else:
        lines.append("weights       none published")
    if entry.get("notes"):
        lines.append(f"notes         {entry['notes']}")
    if weights:
        lines += [
            "",
            "use:",
            f"  semseg download {name}",
            f"  semseg predict {name} zoo images/ --out preds/",
            f"  python -c \"import semseg; m = semseg.init_model('{name}', checkpoint='zoo')\"",
        ]
    return "\n".join(lines)


def no_match_hint(pattern: str) -> str:
    """Why a pattern selected nothing and what to try instead."""
    from semseg.zoo import list_models, methods, nearest_models

    word = pattern.strip("*?[]")
    near_methods = difflib.get_close_matches(word, methods(), n=3, cutoff=0.6) if word else []
    near = nearest_models(word) if word else []
    lines = [f"0 models match {pattern!r}."]
    if near_methods:
        lines.append(f"Nearest methods: {', '.join(near_methods)} (`semseg zoo {near_methods[0]}` lists its models)")
    if near:
        lines.append(f"Nearest names: {', '.join(near)}")
    widened = f"*{pattern.strip('*')}*"
    if widened != pattern and set("*?[") & set(pattern) and list_models(widened):
        lines.append(f"A shell pattern must match the whole name: '{widened}' matches "
                     f"{len(list_models(widened))} models")
    lines += [
        "PATTERN is a substring ('pspnet', 'cityscapes') or, with * ? [ in it, a shell pattern matched "
        "against the whole name ('pspnet_r50*', quoted); `semseg zoo` lists every model.",
        f"Methods: {', '.join(methods())}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from semseg.zoo import manifest, match_models

    if args.pattern in manifest() and not args.json:
        print(describe(args.pattern))
        return 0
    names = [args.pattern] if args.pattern in manifest() else match_models(args.pattern)
    if not names:
        print(no_match_hint(args.pattern), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({name: manifest()[name] for name in names}, indent=2))
    else:
        print_table(names)
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    zoo = commands.add_parser(
        "zoo", help="list the zoo's models (published mIoU, weights), or show one in full",
        description="List the zoo's models with dataset, crop, schedule, published metric, whether the "
                    "method is verified exact against MMSegmentation, and the weights URL; an exact name "
                    "shows that model in full.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    zoo.add_argument("pattern", nargs="?", default="", metavar="PATTERN",
                     help="a word the names contain ('pspnet'), a shell pattern with * ? [ ('fcn_r50*'), or "
                          "an exact name (shows that model in full); default: every model")
    zoo.add_argument("--json", action="store_true", help="print the matching manifest entries as JSON")
    zoo.set_defaults(func=run)
