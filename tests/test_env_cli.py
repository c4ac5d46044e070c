"""``semseg env``: versions, devices, threads, environment and optional extras, as text and JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import semseg
from semseg.cli import env as env_cli


def env(*argv: str) -> int:
    root = argparse.ArgumentParser(prog="semseg")
    env_cli.register(root.add_subparsers(dest="command"))
    args = root.parse_args(["env", *argv])
    return args.func(args)


def test_json_report_has_versions_devices_threads_and_extras(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert env("--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["versions", "devices", "threads", "environment", "optional extras"]
    versions = report["versions"]
    assert versions["semseg"] == semseg.__version__ and versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__ and versions["python"].startswith(".".join(map(str, sys.version_info[:2])))
    assert "opencv" in versions
    assert report["devices"]["cuda available"] == torch.cuda.is_available()
    assert isinstance(report["devices"]["mps available"], bool)
    assert report["threads"]["torch intra-op threads"] == torch.get_num_threads()
    assert report["environment"]["OMP_NUM_THREADS"] == "3"
    assert report["environment"]["weights cache"] == str(tmp_path / "checkpoints")
    assert set(report["optional extras"]) == {"safetensors", "matplotlib", "onnx", "onnxruntime", "mmseg"}


def test_extras_say_missing_and_broken(capsys, monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "semseg_test_broken_extra.py").write_text("raise ImportError('needs libfoo.so')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(env_cli, "EXTRAS", {
        "semseg_test_missing_extra": ("semseg-test-missing-extra", "nothing"),
        "semseg_test_broken_extra": ("semseg-test-broken-extra", "nothing"),
        "json": ("no-such-distribution", "a module that imports"),
    })
    assert env("--json") == 0
    extras = json.loads(capsys.readouterr().out)["optional extras"]
    assert extras["semseg_test_missing_extra"] == "not installed"
    assert extras["semseg_test_broken_extra"] == "installed but not importable: ImportError: needs libfoo.so"
    assert extras["json"] == "importable"


def test_text_report_lists_every_section(capsys) -> None:
    assert env() == 0
    out = capsys.readouterr().out
    for line in ("versions:", "devices:", "threads:", "environment:", "optional extras:"):
        assert f"\n{line}\n" in f"\n{out}"
    assert "  torch " in out and "(export --format onnx)" in out and "SEMSEG_WEIGHTS_MIRROR" in out


def test_help_has_examples_and_describes_every_argument() -> None:
    root = argparse.ArgumentParser(prog="semseg")
    env_cli.register(root.add_subparsers(dest="command"))
    sub = root._subparsers._group_actions[0].choices["env"]
    assert "examples:" in sub.format_help() and "semseg env --json" in sub.format_help()
    assert all(action.help for action in sub._actions)
