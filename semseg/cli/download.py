"""``semseg download NAME... [--all PATTERN]``: fetch zoo checkpoints into the weights cache, hashes checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

EPILOG = """\
examples:
  semseg download pspnet_r50-d8_4xb2-40k_cityscapes-512x1024
  semseg download --all 'deeplabv3plus_r50*cityscapes*'      # every zoo model a pattern selects
  semseg download --dry-run pspnet_r50-d8_4xb2-40k_cityscapes-512x1024   # where the file goes, no download
  SEMSEG_WEIGHTS_MIRROR=http://mirror.local/weights semseg download fcn_r50-d8_4xb2-40k_cityscapes-512x1024

Files go to $SEMSEG_HOME/checkpoints (default ~/.cache/semseg/checkpoints), where init_model(...,
checkpoint='zoo'), `semseg predict NAME zoo ...` and pretrained backbones find them. A file whose SHA-256
does not start with the manifest's prefix is deleted. For a machine without network access, run with
--dry-run there to see the paths, fetch the files elsewhere, and copy them to those paths.
"""


class Target(NamedTuple):
    """One file to fetch: what the user named, its URL and the SHA-256 prefix it must have."""

    name: str
    url: str
    sha256: str | None


def resolve_targets(names: list[str], pattern: str | None) -> tuple[list[Target], list[str]]:
    """Targets for zoo names, backbone names (``open-mmlab://resnet50_v1c``) and ``--all PATTERN``, one per
    URL, and notes on pattern matches without published weights. Unknown names raise ``KeyError`` (before
    anything is downloaded)."""
    from semseg.engine.checkpoint import hash_in_name
    from semseg.engine.pretrained import resolve_pretrained
    from semseg.zoo import match_models, model_info

    targets: dict[str, Target] = {}
    notes = []
    for name in names:
        if "://" in name:
            url = resolve_pretrained(name)
            targets.setdefault(url, Target(name, url, hash_in_name(url)))
            continue
        entry = model_info(name)
        if not entry.get("weights"):
            raise KeyError(f"the zoo publishes no weights for {name}: {entry.get('notes') or 'see `semseg zoo NAME`'}")
        targets.setdefault(entry["weights"], Target(name, entry["weights"], entry.get("sha256_prefix")))
    if pattern is not None:
        matched = match_models(pattern)
        if not matched:
            raise KeyError(f"--all {pattern!r} selects no zoo model (see `semseg zoo {pattern}`)")
        for name in matched:
            entry = model_info(name)
            if entry.get("weights"):
                targets.setdefault(entry["weights"], Target(name, entry["weights"], entry.get("sha256_prefix")))
            else:
                notes.append(f"{name}: no weights published, skipped")
    return list(targets.values()), notes


def fetch(target: Target, mirror: str | None) -> tuple[Path, str]:
    """Download one target unless the cache holds it with the right hash; ``(path, what happened)``.
    A cached file with another hash is deleted and downloaded again."""
    from semseg.engine.checkpoint import cached_path, download_checkpoint, file_sha256

    path = cached_path(target.url)
    if path.is_file():
        actual = file_sha256(path)
        if target.sha256 is None or actual.startswith(target.sha256):
            return path, "cached, hash ok" if target.sha256 else "cached"
        print(f"{path}: SHA-256 {actual[:len(target.sha256)]}... is not {target.sha256}...; deleted, "
              "downloading again", file=sys.stderr)
        path.unlink()
    return download_checkpoint(target.url, sha256=target.sha256, mirror=mirror), "downloaded, hash ok"


def run(args: argparse.Namespace) -> int:
    from semseg.engine.checkpoint import cached_path

    if not args.names and args.all is None:
        raise ValueError("name at least one zoo model (see `semseg zoo`) or use --all PATTERN")
    targets, notes = resolve_targets(args.names, args.all)
    for note in notes:
        print(note, file=sys.stderr)
    if args.dry_run:
        for target in targets:
            path = cached_path(target.url)
            print(f"{target.name}: {target.url} -> {path} ({'present' if path.is_file() else 'missing'})")
        return 0
    failed = 0
    for index, target in enumerate(targets, 1):
        print(f"[{index}/{len(targets)}] {target.name}", file=sys.stderr, flush=True)
        try:
            path, status = fetch(target, args.mirror)
        except (OSError, ValueError) as error:
            failed += 1
            print(f"semseg: error: {target.name}: {error}", file=sys.stderr)
            continue
        print(f"{path}  ({status})")
    print(f"{len(targets) - failed} of {len(targets)} files in the cache" + (f", {failed} failed" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    download = commands.add_parser(
        "download", help="fetch zoo checkpoints into the weights cache (hashes checked)",
        description="Fetch the published weights of zoo models (or ImageNet backbones) into the weights "
                    "cache, checking each file's SHA-256 against the manifest; a file already cached is "
                    "checked instead. Prints each cached path.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("names", nargs="*", metavar="NAME",
                          help="zoo model names (`semseg zoo` lists them) or backbone weights names such as "
                               "open-mmlab://resnet50_v1c")
    download.add_argument("--all", metavar="PATTERN",
                          help="also every zoo model this pattern selects (a substring, or a shell pattern "
                               "with * ? [), as in `semseg zoo PATTERN`")
    download.add_argument("--mirror", metavar="URL",
                          help="a base URL or folder tried before the original URL (the file name appended); "
                               "default: $SEMSEG_WEIGHTS_MIRROR")
    download.add_argument("--dry-run", action="store_true",
                          help="print each file's URL and cache path (present or missing); download nothing")
    download.set_defaults(func=run)
