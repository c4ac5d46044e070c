"""Weights without the internet at hand: the cache under $SEMSEG_HOME, a mirror tried before the original URL,
``semseg download`` with hashes checked, the error an offline machine gets, and the download progress display."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from semseg.cli import download as download_cli
from semseg.cli.progress import DownloadProgress
from semseg.engine.checkpoint import (
    cached_path,
    download_checkpoint,
    load_checkpoint,
    weights_cache_dir,
)
from semseg.zoo import manifest

ZOO_NAME = "fake_r1-d8_1xb1-1k_synthetic-8x8"


def _weights(directory: Path, stem: str, seed: int = 0) -> Path:
    """A small checkpoint named ``<stem>-<its SHA-256 prefix>.pth`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / "probe.pth"
    torch.save({"state_dict": {"weight": torch.randn(3, generator=torch.Generator().manual_seed(seed))}}, probe)
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    return probe.rename(directory / f"{stem}-{digest[:8]}.pth")


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _closed_port_url(name: str) -> str:
    """An http URL nobody answers (a port that was free a moment ago): what an offline machine sees."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights/{name}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SEMSEG_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "home"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on a thread: (base URL, the folder it serves)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# ----------------------------------------------------------------------------------------------------------
# The cache and the mirror
# ----------------------------------------------------------------------------------------------------------


def test_cache_lives_under_semseg_home(home: Path) -> None:
    assert weights_cache_dir() == home / "checkpoints"
    url = "https://download.example.org/a/pspnet_20200604_192608-efe53f0d.pth"
    assert cached_path(url) == home / "checkpoints" / "pspnet_20200604_192608-efe53f0d.pth"
    unhashed = cached_path("https://example.org/run/latest.pth")
    assert unhashed.parent.parent == home / "checkpoints" and unhashed.name == "latest.pth"


def test_a_file_put_in_the_cache_by_hand_is_used_offline(home: Path, tmp_path: Path) -> None:
    src = _weights(tmp_path / "usb_stick", "pspnet")
    url = _closed_port_url(src.name)
    (home / "checkpoints").mkdir(parents=True)
    (home / "checkpoints" / src.name).write_bytes(src.read_bytes())
    assert download_checkpoint(url, progress=False) == home / "checkpoints" / src.name


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_mirror_is_tried_before_the_original_url(home: Path, tmp_path: Path, monkeypatch, as_url: bool) -> None:
    src = _weights(tmp_path / "mirror", "fcn")
    monkeypatch.setenv("SEMSEG_WEIGHTS_MIRROR", src.parent.as_uri() if as_url else str(src.parent))
    got = download_checkpoint(_closed_port_url(src.name), progress=False)  # the original is unreachable
    assert got == home / "checkpoints" / src.name and got.read_bytes() == src.read_bytes()


def test_http_mirror_with_progress(home: Path, server, monkeypatch) -> None:
    base, root = server
    src = _weights(root / "weights", "upernet")
    monkeypatch.setenv("SEMSEG_WEIGHTS_MIRROR", f"{base}/weights/")
    calls = []
    got = download_checkpoint(_closed_port_url(src.name), progress=lambda done, total: calls.append((done, total)))
    size = src.stat().st_size
    assert got.read_bytes() == src.read_bytes()
    assert calls[0] == (0, size) and calls[-1] == (size, size)


def test_a_mirror_without_the_file_falls_through_to_the_original(home: Path, server, tmp_path: Path,
                                                                  monkeypatch) -> None:
    base, root = server
    src = _weights(root / "original", "ccnet")
    monkeypatch.setenv("SEMSEG_WEIGHTS_MIRROR", str(tmp_path / "empty_mirror"))
    got = download_checkpoint(f"{base}/original/{src.name}", progress=False)
    assert got.read_bytes() == src.read_bytes() and _files(home) == [src.name]


@pytest.mark.parametrize("via", ["mirror", "original"])
def test_a_mismatching_download_is_deleted(home: Path, server, tmp_path: Path, monkeypatch, via: str) -> None:
    base, root = server
    src = _weights(root, "danet")
    wrong = src.with_name("danet-00000000.pth" if not src.name.startswith("danet-0000") else "danet-11111111.pth")
    src.rename(wrong)
    if via == "mirror":
        monkeypatch.setenv("SEMSEG_WEIGHTS_MIRROR", base)
        url = _closed_port_url(wrong.name)
    else:
        url = f"{base}/{wrong.name}"
    with pytest.raises(ValueError, match="checksum mismatch.*deleted"):
        download_checkpoint(url, progress=False)
    assert _files(home) == []  # no partial or mismatching file left in the cache


def test_the_manifest_hash_is_checked_when_given(home: Path, tmp_path: Path) -> None:
    src = _weights(tmp_path / "server", "gcnet")
    with pytest.raises(ValueError, match="expected SHA-256 abcdef12"):
        download_checkpoint(src.as_uri(), sha256="abcdef12", progress=False)
    assert _files(home) == []


def test_offline_error_names_the_path_to_put_the_file(home: Path) -> None:
    name = "pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth"
    url = _closed_port_url(name)
    with pytest.raises(OSError) as info:
        download_checkpoint(url, progress=False)
    message = str(info.value)
    assert str(home / "checkpoints" / name) in message and url in message
    assert "SEMSEG_WEIGHTS_MIRROR" in message
    assert _files(home) == []


def test_offline_load_checkpoint_names_the_path_too(home: Path) -> None:
    url = _closed_port_url("fcn-0123abcd.pth")
    with pytest.raises(OSError, match=str(home / "checkpoints" / "fcn-0123abcd.pth")):
        load_checkpoint(torch.nn.Linear(1, 1), url)


# ----------------------------------------------------------------------------------------------------------
# semseg download
# ----------------------------------------------------------------------------------------------------------


def download(*argv: str) -> int:
    root = argparse.ArgumentParser(prog="semseg")
    download_cli.register(root.add_subparsers(dest="command"))
    args = root.parse_args(["download", *argv])
    return args.func(args)


@pytest.fixture
def zoo_weights(home: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fake zoo entry whose weights live at a file:// URL; returns the served file."""
    src = _weights(tmp_path / "server", "fake_r1")
    entry = {"config": "synthetic/x.py", "method": "fake", "dataset": "Synthetic", "weights": src.as_uri(),
             "sha256_prefix": src.stem.rsplit("-", 1)[1], "metrics": {"mIoU": 50.0}, "crop_size": [8, 8],
             "iters": 1000, "notes": ""}
    monkeypatch.setitem(manifest(), ZOO_NAME, entry)
    monkeypatch.setitem(manifest(), ZOO_NAME + "_no-weights", {**entry, "weights": None, "sha256_prefix": None,
                                                               "notes": "test config only"})
    return src


def test_download_fetches_then_finds_it_cached(zoo_weights: Path, home: Path, capsys) -> None:
    cached = home / "checkpoints" / zoo_weights.name
    assert download(ZOO_NAME) == 0
    assert cached.read_bytes() == zoo_weights.read_bytes()
    assert capsys.readouterr().out == f"{cached}  (downloaded, hash ok)\n"
    assert download(ZOO_NAME) == 0
    assert capsys.readouterr().out == f"{cached}  (cached, hash ok)\n"


def test_download_replaces_a_corrupt_cached_file(zoo_weights: Path, home: Path, capsys) -> None:
    cached = home / "checkpoints" / zoo_weights.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    assert download(ZOO_NAME) == 0
    assert cached.read_bytes() == zoo_weights.read_bytes()
    assert "deleted, downloading again" in capsys.readouterr().err


def test_download_all_skips_entries_without_weights(zoo_weights: Path, home: Path, capsys) -> None:
    assert download("--all", "fake_r1") == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and f"{ZOO_NAME}_no-weights: no weights published, skipped" in err
    assert _files(home) == [zoo_weights.name]


def test_download_dry_run_says_where_files_go(zoo_weights: Path, home: Path, capsys) -> None:
    assert download("--dry-run", ZOO_NAME) == 0
    out = capsys.readouterr().out
    assert f"{home / 'checkpoints' / zoo_weights.name} (missing)" in out and zoo_weights.as_uri() in out
    assert _files(home) == []


def test_download_offline_reports_the_path_and_fails(zoo_weights: Path, home: Path, monkeypatch, capsys) -> None:
    url = _closed_port_url(zoo_weights.name)
    monkeypatch.setitem(manifest(), ZOO_NAME, {**manifest()[ZOO_NAME], "weights": url})
    assert download(ZOO_NAME) == 1
    err = capsys.readouterr().err
    assert str(home / "checkpoints" / zoo_weights.name) in err and "0 of 1 files in the cache, 1 failed" in err


def test_download_mirror_option(zoo_weights: Path, home: Path, monkeypatch) -> None:
    monkeypatch.setitem(manifest(), ZOO_NAME, {**manifest()[ZOO_NAME],
                                               "weights": _closed_port_url(zoo_weights.name)})
    assert download("--mirror", str(zoo_weights.parent), ZOO_NAME) == 0
    assert _files(home) == [zoo_weights.name]


def test_download_checks_every_name_before_fetching(zoo_weights: Path, home: Path) -> None:
    with pytest.raises(KeyError, match="not a zoo model"):
        download(ZOO_NAME, "pspnet_r50-d8_4xb2-40k_cityscapes-512x102")
    with pytest.raises(KeyError, match="no weights"):
        download(ZOO_NAME, ZOO_NAME + "_no-weights")
    with pytest.raises(ValueError, match="--all"):
        download()
    assert _files(home) == []


def test_download_backbone_names_resolve_to_their_urls(home: Path, capsys) -> None:
    assert download("--dry-run", "open-mmlab://resnet50_v1c") == 0
    assert "resnet50_v1c-2cccc1ad.pth (missing)" in capsys.readouterr().out


def test_help_has_examples_and_describes_every_argument() -> None:
    root = argparse.ArgumentParser(prog="semseg")
    download_cli.register(root.add_subparsers(dest="command"))
    sub = root._subparsers._group_actions[0].choices["download"]
    assert "examples:" in sub.format_help() and "semseg download --all" in sub.format_help()
    assert all(action.help for action in sub._actions)


# ----------------------------------------------------------------------------------------------------------
# Progress display
# ----------------------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_lines_at_every_tenth() -> None:
    stream = io.StringIO()
    progress = DownloadProgress("w.pth", stream=stream)
    progress(0, 10_000_000)
    for done in range(500_000, 10_000_001, 500_000):
        progress(done, 10_000_000)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("w.pth: 10.0 MB/10.0 MB ")
    assert all("B/s, eta " in line for line in lines)


def test_progress_bar_on_a_terminal() -> None:
    stream = _Terminal()
    progress = DownloadProgress("w.pth", stream=stream, width=10)
    progress(0, 2000)
    progress(1000, 2000)
    progress(2000, 2000)
    text = stream.getvalue()
    assert "\rw.pth [#####.....] 1.0 KB/2.0 KB" in text and text.endswith("\n")
    assert "[##########] 2.0 KB/2.0 KB" in text


def test_progress_with_an_unknown_size() -> None:
    terminal, plain = _Terminal(), io.StringIO()
    for stream in (terminal, plain):
        progress = DownloadProgress("w.pth", stream=stream)
        progress(0, 0)
        progress(1500, 0)
        progress(3000, 3000)  # the final call: the size is known now
    assert "\rw.pth 1.5 KB " in terminal.getvalue() and terminal.getvalue().endswith("\n")
    assert plain.getvalue().splitlines() == [plain.getvalue().strip()] and "3.0 KB/3.0 KB" in plain.getvalue()
