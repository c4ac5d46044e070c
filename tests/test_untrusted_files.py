"""Untrusted files: a checkpoint crafted to run code when unpickled runs nothing, whichever path loads it
(``init_model``, ``load_from``, ``--resume``, pretrained backbone weights), in the zip and the legacy format;
a download whose hash does not match is deleted; a URL cannot name a file outside the weights cache.

Each payload is real: a control load with the full unpickler creates the marker file."""

from __future__ import annotations

import hashlib
import os
import pathlib
import warnings
from pathlib import Path

import pytest
import torch

from semseg.apis import init_model
from semseg.config import load_config
from semseg.engine.checkpoint import cached_path, download_checkpoint, load_checkpoint
from semseg.engine.trainer import Trainer

CONFIG = "fcn_r18-d8_1xb8-600_synthetic-96x96"
TINY = {"train_cfg.max_iters": 1, "train_dataloader.batch_size": 2, "train_dataloader.dataset.num_samples": 2,
        "val_dataloader.dataset.num_samples": 2}


class TouchFile:
    """Unpickling calls ``Path.touch(marker)``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class ShellCommand:
    """Unpickling runs ``touch marker`` through ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


PAYLOADS = {"Path.touch": TouchFile, "os.system": ShellCommand}
CASES = [(name, zipped) for name in PAYLOADS for zipped in (True, False)]
IDS = [f"{name}-{'zip' if zipped else 'legacy'}" for name, zipped in CASES]


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """A real state dict of the tiny model (so that a load that ignores the payload succeeds)."""
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return init_model(CONFIG, device="cpu").state_dict()


def crafted(path: Path, contents: dict, payload: str, zipped: bool) -> Path:
    """``contents`` with a payload planted in its ``meta``, saved at ``path``; the payload would create
    ``<path>.ran`` when unpickled."""
    marker = path.with_name(path.name + ".ran")
    meta = dict(contents.get("meta", {}), note=PAYLOADS[payload](marker))
    torch.save({**contents, "meta": meta}, path, _use_new_zipfile_serialization=zipped)
    return path


def ran(path: Path) -> bool:
    return path.with_name(path.name + ".ran").exists()


def trainer(work_dir: Path, resume=False, **options) -> Trainer:
    torch.set_num_threads(1)
    return Trainer(load_config(CONFIG, {**TINY, **options}), work_dir, resume=resume, device="cpu")


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_the_payloads_are_real(tmp_path: Path, payload: str) -> None:
    path = crafted(tmp_path / "evil.pth", {"state_dict": {}}, payload, zipped=True)
    torch.load(path, weights_only=False)  # the full unpickler: never used by semseg
    assert ran(path)


@pytest.mark.parametrize(("payload", "zipped"), CASES, ids=IDS)
def test_init_model_runs_nothing(tmp_path: Path, weights, payload: str, zipped: bool) -> None:
    path = crafted(tmp_path / "evil.pth", {"state_dict": weights}, payload, zipped)
    model = init_model(CONFIG, checkpoint=str(path), device="cpu")
    assert not ran(path)
    assert torch.equal(model.state_dict()["decode_head.conv_seg.weight"], weights["decode_head.conv_seg.weight"])


@pytest.mark.parametrize(("payload", "zipped"), CASES, ids=IDS)
def test_load_from_runs_nothing(tmp_path: Path, weights, payload: str, zipped: bool) -> None:
    path = crafted(tmp_path / "evil.pth", {"state_dict": weights}, payload, zipped)
    run = trainer(tmp_path / "work", load_from=str(path))
    run._start()
    assert not ran(path)
    assert torch.equal(run.module.state_dict()["backbone.stem.0.weight"], weights["backbone.stem.0.weight"])


@pytest.mark.parametrize(("payload", "zipped"), CASES, ids=IDS)
def test_pretrained_backbone_weights_run_nothing(tmp_path: Path, weights, payload: str, zipped: bool) -> None:
    backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    path = crafted(tmp_path / "evil.pth", {"state_dict": backbone}, payload, zipped)
    run = trainer(tmp_path / "work", **{"model.pretrained": str(path)})
    run._start()
    assert not ran(path)
    assert torch.equal(run.module.backbone.stem[0].weight, backbone["stem.0.weight"])


@pytest.mark.parametrize(("payload", "zipped"), CASES, ids=IDS)
def test_resume_runs_nothing(tmp_path: Path, payload: str, zipped: bool) -> None:
    """A training checkpoint with a payload in its meta is refused whole (resuming reads only weights_only)."""
    work_dir = tmp_path / "work"
    run = trainer(work_dir)
    contents = run.state()
    path = crafted(work_dir / "iter_1.pth", contents, payload, zipped)
    with pytest.raises(RuntimeError, match=r"iter_1.pth holds more than tensors and plain containers, so it was "
                                           r"not unpickled .*: it names the global (getattr|posix.system)"):
        trainer(tmp_path / "elsewhere", resume=path).train()
    with pytest.raises(RuntimeError, match=r"no checkpoint in .* can be resumed from: iter_1.pth \(checkpoint"):
        trainer(work_dir, resume=True).train()  # --resume: the newest checkpoint is reported, none is left
    assert not ran(path)


def test_a_download_whose_hash_does_not_match_is_deleted(tmp_path: Path, monkeypatch, weights) -> None:
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path / "home"))
    server = tmp_path / "server"
    server.mkdir()
    good = server / "weights.pth"
    torch.save({"state_dict": weights}, good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    tampered = good.rename(server / f"fcn_synthetic-{wrong}.pth")
    model = trainer(tmp_path / "work").module
    with pytest.raises(ValueError, match=f"checksum mismatch .*expected SHA-256 {wrong}.*the file was deleted"):
        load_checkpoint(model, tampered.as_uri())
    cache = tmp_path / "home" / "checkpoints"
    assert not [p for p in cache.rglob("*") if p.is_file()]  # neither the file nor a partial one

    # a mirror holding a different file under the published name: refused and deleted the same way
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / tampered.name).write_bytes(b"not the published file")
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_checkpoint(tampered.as_uri(), mirror=str(mirror), progress=False)
    assert not [p for p in cache.rglob("*") if p.is_file()]


@pytest.mark.parametrize("url", ["https://example.com/w/..%2F..%2Fevil.pth", "https://example.com/w/%2E%2E/x.pth",
                                 "https://example.com/w/a%2F..%2F..%2F..%2Fevil-abc123.pth"])
def test_a_url_cannot_name_a_file_outside_the_cache(tmp_path: Path, url: str) -> None:
    cache = tmp_path / "cache"
    path = cached_path(url, cache)
    assert path.resolve().is_relative_to(cache.resolve()) and ".." not in path.parts


@pytest.mark.parametrize("url", ["https://example.com/w/%2E%2E", "https://example.com/w/..%2F",
                                 "https://example.com/w/..%5C..%5Cevil.pth"])
def test_a_url_without_a_safe_file_name_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="cannot tell a safe file name from the URL"):
        cached_path(url, tmp_path)


def test_no_code_path_reads_a_file_with_the_full_unpickler() -> None:
    """Every ``torch.load`` in semseg passes ``weights_only=True`` or the restricted ``pickle_module``; no
    ``torch.jit.load`` (it runs code); ``pickle.loads`` only where semseg reads bytes it pickled itself."""
    import ast

    package = Path(__file__).resolve().parents[1] / "semseg"
    own_bytes = {"data/datasets/base.py"}  # the dataset's sample list, pickled in the same process
    problems, loads = [], 0
    for path in package.rglob("*.py"):
        where = path.relative_to(package).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = ast.unparse(node.func.value)
            keywords = {k.arg: k.value for k in node.keywords}
            if owner == "torch" and node.func.attr == "load":
                loads += 1
                weights_only = keywords.get("weights_only")
                safe = (isinstance(weights_only, ast.Constant) and weights_only.value is True) or (
                    "pickle_module" in keywords and ast.unparse(keywords["pickle_module"]) == "_restricted_pickle")
                if not safe:
                    problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            elif owner == "torch.jit" and node.func.attr == "load":
                problems.append(f"{where}:{node.lineno} torch.jit.load")
            elif owner == "pickle" and node.func.attr in ("load", "loads", "Unpickler") and where not in own_bytes:
                problems.append(f"{where}:{node.lineno} pickle.{node.func.attr}")
    assert not problems, problems
    assert loads >= 3  # checkpoint.py's two, the trainer's resume
