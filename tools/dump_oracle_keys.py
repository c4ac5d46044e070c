"""Record the state-dict keys and shapes of the oracle's (MMSegmentation 1.2.2) zoo models.

For each zoo name of the chosen methods (default: the zoo's, ``semseg.zoo.methods()``) in the zoo facts
file (default: ``tools/mmseg_zoo_facts.json``, MMSegmentation's published models), and each config semseg
ships for those methods that the oracle also has (parents such as the R-50 Pascal Context configs, the
night-time PSPNet configs), the oracle's own config file (``<mmseg>/.mim/configs/<method>/<name>.py``) is
built with MMSegmentation and ``{key: shape}`` of its state dict recorded. Models are built on the ``meta``
device (no memory, no init), falling back to the CPU.
Identical key->shape maps are stored once:

    {"mmseg_version": ..., "models": {"0": {key: [shape...]}}, "names": {name: "0"}, "failed": {name: why}}

Needs the conformance extra (mmsegmentation, mmcv-lite, mmengine). Usage:

    python tools/dump_oracle_keys.py [FACTS_JSON] [--methods fcn pspnet ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "conformance")]

from oracle import install_ext_stub, load_oracle_config, mmseg_config_dir, prepare_model_cfg  # noqa: E402

from semseg.zoo import methods  # noqa: E402

DEFAULT_FACTS = Path(__file__).with_name("mmseg_zoo_facts.json")
DEFAULT_OUT = REPO / "tests" / "conformance" / "fixtures" / "oracle_keys.json.gz"
DEFAULT_METHODS = methods()
CONFIG_ROOT = REPO / "semseg" / "configs"


def key_shapes(model_cfg: dict) -> dict[str, list[int]]:
    """``{key: shape}`` of the state dict of the oracle model built from ``model_cfg``."""
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS

    linspace = torch.linspace

    def cpu_linspace(*args, **kwargs):  # the transformers read drop-path rates with .item()
        return linspace(*args, **{**kwargs, "device": "cpu"})

    try:
        with torch.device("meta"), mock.patch("torch.linspace", cpu_linspace):
            model = MODELS.build(ConfigDict(model_cfg))
    except Exception:  # some modules compute values on tensors while building: use the CPU then
        model = MODELS.build(ConfigDict(model_cfg))
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def model_names(facts: Path, methods: list[str]) -> list[tuple[str, str]]:
    """``(name, method folder)`` to record: the facts file's names of ``methods``, then the configs semseg
    ships under those method folders that the oracle's tree also has (each name once)."""
    names: dict[str, str] = {}
    for entry in json.loads(facts.read_text()):
        if entry["method_folder"] in methods:
            names.setdefault(entry["name"], entry["method_folder"])
    oracle = mmseg_config_dir()
    for method in methods:
        for path in sorted((CONFIG_ROOT / method).glob("*.py")):
            if (oracle / method / path.name).is_file():
                names.setdefault(path.stem, method)
    return list(names.items())


def dump(facts: Path, methods: list[str], out: Path) -> dict:
    """Build every model ``model_names`` lists and write the gzip JSON fixture to ``out``."""
    install_ext_stub()
    import mmseg
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    models: dict[str, dict] = {}
    ids: dict[str, str] = {}  # canonical JSON of a key->shape map -> its id
    names: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name, method in model_names(facts, methods):
        try:
            shapes = key_shapes(prepare_model_cfg(load_oracle_config(name, method).model))
        except Exception as err:  # record and go on: the fixture says which names the oracle cannot build
            failed[name] = f"{type(err).__name__}: {err}"
            print(f"FAILED {name}: {failed[name]}", file=sys.stderr)
            continue
        canon = json.dumps(shapes, sort_keys=True)
        if canon not in ids:
            ids[canon] = str(len(ids))
            models[ids[canon]] = shapes
        names[name] = ids[canon]
    data = {"mmseg_version": mmseg.__version__, "methods": methods, "models": models, "names": names,
            "failed": failed}
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(out, "wb", mtime=0) as f:  # mtime 0: the same models give the same bytes
        f.write(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    print(f"{len(names)} names, {len(models)} distinct models, {len(failed)} failed -> {out} "
          f"({out.stat().st_size / 1024:.0f} KiB)")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("facts", nargs="?", type=Path, default=DEFAULT_FACTS, help="zoo facts JSON")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="method folders to dump")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="gzip JSON fixture to write")
    args = parser.parse_args(argv)
    dump(args.facts, args.methods, args.out)


if __name__ == "__main__":
    main()
