"""Checkpoint reading, downloading, loading into models and atomic saving (semseg.engine.checkpoint)."""

import builtins
import hashlib
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from semseg.engine.checkpoint import (
    LoadResult,
    Unpickled,
    download_checkpoint,
    load_checkpoint,
    load_state_dict_file,
    save_checkpoint,
)


class Tiny(nn.Module):
    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv_seg = nn.Conv2d(4, out, 1)


def randomized(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    return model


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_roundtrip_bare_state_dict(tmp_path):
    src, dst = randomized(Tiny()), Tiny()
    path = tmp_path / "bare.pth"
    save_checkpoint(src.state_dict(), path)
    result = load_checkpoint(dst, path)
    assert isinstance(result, LoadResult) and result.ok and result.meta == {}
    assert_same_weights(src, dst)


def test_roundtrip_mmseg_layout_with_meta(tmp_path):
    src, dst = randomized(Tiny()), Tiny()
    path = tmp_path / "mmseg.pth"
    meta = {"dataset_meta": {"classes": ("road", "sky")}, "iter": 40000}
    save_checkpoint({"state_dict": src.state_dict(), "meta": meta}, path)
    result = load_checkpoint(dst, path)
    assert result.meta == meta
    assert_same_weights(src, dst)


@pytest.mark.parametrize("key", ["model", "module"])
def test_other_container_keys(tmp_path, key):
    src = randomized(Tiny())
    save_checkpoint({key: src.state_dict(), "epoch": 3}, tmp_path / "c.pth")
    state_dict, _ = load_state_dict_file(tmp_path / "c.pth")
    assert state_dict.keys() == src.state_dict().keys()


def test_ddp_prefix_stripped(tmp_path):
    src, dst = randomized(Tiny()), Tiny()
    save_checkpoint(
        {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "d.pth"
    )
    state_dict, _ = load_state_dict_file(tmp_path / "d.pth")
    assert not any(k.startswith("module.") for k in state_dict)
    load_checkpoint(dst, tmp_path / "d.pth")
    assert_same_weights(src, dst)


def test_revise_keys(tmp_path):
    src, dst = randomized(Tiny()), Tiny()
    save_checkpoint({f"backbone.{k}": v for k, v in src.state_dict().items()}, tmp_path / "r.pth")
    with pytest.raises(RuntimeError, match="backbone.conv.weight"):
        load_checkpoint(Tiny(), tmp_path / "r.pth")
    load_checkpoint(dst, tmp_path / "r.pth", revise_keys=[(r"^backbone\.", "")])
    assert_same_weights(src, dst)


def mismatched_checkpoint(tmp_path):
    """A Tiny(out=5) checkpoint without bn.bias and with an extra key: one of each problem."""
    state_dict = randomized(Tiny(out=5)).state_dict()
    del state_dict["bn.bias"]
    state_dict["aux.weight"] = torch.ones(2)
    path = tmp_path / "mismatch.pth"
    save_checkpoint({"state_dict": state_dict}, path)
    return path, state_dict


def test_strict_reports_every_problem_and_loads_nothing(tmp_path):
    path, _ = mismatched_checkpoint(tmp_path)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert "mismatch.pth" in message
    assert "missing keys (1): bn.bias" in message
    assert "unexpected keys (1): aux.weight" in message
    assert "conv_seg.weight (checkpoint [5, 4, 1, 1], model [3, 4, 1, 1])" in message
    assert "conv_seg.bias" in message
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_non_strict_warns_and_loads_the_rest(tmp_path):
    path, state_dict = mismatched_checkpoint(tmp_path)
    model = Tiny()
    seg_before = model.conv_seg.weight.detach().clone()
    with pytest.warns(UserWarning, match="shape mismatches \\(2\\)"):
        result = load_checkpoint(model, path, strict=False)
    assert result.missing == ["bn.bias"]
    assert result.unexpected == ["aux.weight"]
    assert {k for k, _, _ in result.mismatched} == {"conv_seg.weight", "conv_seg.bias"}
    assert ("conv_seg.weight", (5, 4, 1, 1), (3, 4, 1, 1)) in result.mismatched
    assert torch.equal(model.conv.weight, state_dict["conv.weight"])
    assert torch.equal(model.bn.running_var, state_dict["bn.running_var"])
    assert torch.equal(model.conv_seg.weight, seg_before)


def test_long_key_lists_are_truncated(tmp_path):
    save_checkpoint(
        {f"extra{i}": torch.zeros(1) for i in range(25)} | Tiny().state_dict(), tmp_path / "x.pth"
    )
    with pytest.raises(RuntimeError, match=r"unexpected keys \(25\): .*\.\.\. and 15 more"):
        load_checkpoint(Tiny(), tmp_path / "x.pth")


@pytest.fixture
def fake_mmengine(monkeypatch):
    """A stand-in `mmengine.logging.MessageHub`, importable only while the test saves."""
    package = types.ModuleType("mmengine")
    logging_module = types.ModuleType("mmengine.logging")

    class MessageHub:
        def __init__(self):
            self.log_scalars = {"train/loss": np.array([0.5, 0.25])}
            self.runtime_info = {"iter": 40000}

    MessageHub.__module__ = "mmengine.logging"
    MessageHub.__qualname__ = "MessageHub"
    logging_module.MessageHub = MessageHub
    package.logging = logging_module
    monkeypatch.setitem(sys.modules, "mmengine", package)
    monkeypatch.setitem(sys.modules, "mmengine.logging", logging_module)

    def forget():
        monkeypatch.delitem(sys.modules, "mmengine.logging")
        monkeypatch.delitem(sys.modules, "mmengine")

    return MessageHub, forget


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_mmseg_training_checkpoint_with_foreign_objects(tmp_path, fake_mmengine, zipfile):
    message_hub_class, forget = fake_mmengine
    src, dst = randomized(Tiny()), Tiny()
    checkpoint = {
        "meta": {"seed": np.int64(7), "lr": np.float64(0.01), "palette": np.arange(6).reshape(2, 3)},
        "state_dict": src.state_dict(),
        "message_hub": message_hub_class(),
        "optimizer": {"param_groups": [{"lr": 0.01}]},
    }
    path = tmp_path / "iter_40000.pth"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zipfile)
    forget()
    with pytest.raises(pickle.UnpicklingError):  # the case the restricted unpickler exists for
        torch.load(path, weights_only=True)

    result = load_checkpoint(dst, path)
    assert_same_weights(src, dst)
    assert result.meta["seed"] == 7 and isinstance(result.meta["seed"], np.int64)
    assert result.meta["lr"] == 0.01 and isinstance(result.meta["lr"], np.float64)
    np.testing.assert_array_equal(result.meta["palette"], np.arange(6).reshape(2, 3))


def test_foreign_objects_become_inert_records(tmp_path, fake_mmengine):
    message_hub_class, forget = fake_mmengine
    save_checkpoint(
        {"state_dict": Tiny().state_dict(), "meta": {"hub": message_hub_class()}}, tmp_path / "h.pth"
    )
    forget()
    _, meta = load_state_dict_file(tmp_path / "h.pth")
    hub = meta["hub"]
    assert isinstance(hub, Unpickled) and hub.name == "mmengine.logging.MessageHub"
    assert hub.state["runtime_info"] == {"iter": 40000}
    np.testing.assert_array_equal(hub.state["log_scalars"]["train/loss"], [0.5, 0.25])


def payloads(marker):
    return {
        "os.system": (os.system, (f"touch {marker}",)),
        "exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess": (subprocess.call, (["touch", str(marker)],)),
    }


class Malicious:
    def __init__(self, reduce_value):
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", ["os.system", "exec", "subprocess"])
def test_malicious_pickle_runs_nothing(tmp_path, payload, zipfile):
    marker = tmp_path / "MARKER"
    src, dst = randomized(Tiny()), Tiny()
    evil = Malicious(payloads(marker)[payload])
    path = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": src.state_dict(), "meta": {"note": evil}}, path, _use_new_zipfile_serialization=zipfile
    )

    result = load_checkpoint(dst, path)
    assert not marker.exists()
    assert_same_weights(src, dst)
    assert isinstance(result.meta["note"], Unpickled)

    torch.save(evil, tmp_path / "only_evil.pth", _use_new_zipfile_serialization=zipfile)
    with pytest.raises(ValueError, match="only_evil.pth"):
        load_state_dict_file(tmp_path / "only_evil.pth")
    assert not marker.exists()

    torch.load(path, weights_only=False)  # control: an unrestricted load does run the payload
    assert marker.exists()


def test_file_without_state_dict_is_refused(tmp_path):
    path = tmp_path / "hparams.pth"
    save_checkpoint({"lr": 0.01, "schedule": "poly", "weights": {"a": 1}}, path)
    with pytest.raises(ValueError, match="hparams.pth") as info:
        load_state_dict_file(path)
    assert "schedule" in str(info.value) and "weights" in str(info.value)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_truncated_file_gives_clear_error(tmp_path, zipfile):
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": randomized(Tiny()).state_dict()}, path, _use_new_zipfile_serialization=zipfile)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*cut.pth"):
        load_state_dict_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_dict_file(tmp_path / "nope.pth")


def test_safetensors_roundtrip(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    src, dst = randomized(Tiny()), Tiny()
    path = tmp_path / "w.safetensors"
    tensors = {f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}
    safetensors_torch.save_file(tensors, str(path), metadata={"dataset": "cityscapes"})
    result = load_checkpoint(dst, path)
    assert result.meta == {"dataset": "cityscapes"}
    assert_same_weights(src, dst)


def test_save_is_atomic(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "x": Unpicklable()}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    assert torch.equal(load_state_dict_file(path)[0]["w"], torch.ones(2))


def write_weights(directory, name):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    save_checkpoint({"state_dict": randomized(Tiny()).state_dict()}, path)
    return path


def test_file_url_download_is_cached(tmp_path):
    src = write_weights(tmp_path / "server", "pspnet.pth")
    cache = tmp_path / "cache"
    got = download_checkpoint(src.as_uri(), cache_dir=cache)
    assert got.name == "pspnet.pth" and got.read_bytes() == src.read_bytes()
    src.unlink()
    assert download_checkpoint(src.as_uri(), cache_dir=cache) == got  # served from the cache
    assert [p.name for p in cache.rglob("*") if p.is_file()] == ["pspnet.pth"]


def test_same_name_at_two_urls_are_two_files(tmp_path):
    """Names without a content hash (latest.pth) are cached per URL, never confused."""
    first = write_weights(tmp_path / "run_a", "latest.pth")
    second = write_weights(tmp_path / "run_b", "latest.pth")
    save_checkpoint({"state_dict": {"conv.weight": torch.ones(1)}}, second)  # another run, other weights
    cache = tmp_path / "cache"
    got_first = download_checkpoint(first.as_uri(), cache_dir=cache)
    got_second = download_checkpoint(second.as_uri(), cache_dir=cache)
    assert got_first != got_second
    assert got_first.read_bytes() == first.read_bytes() and got_second.read_bytes() == second.read_bytes()


def test_hashed_names_are_cached_by_name(tmp_path):
    probe = write_weights(tmp_path / "server", "probe.pth")
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    named = probe.rename(probe.with_name(f"fcn-{digest[:8]}.pth"))
    cache = tmp_path / "cache"
    assert download_checkpoint(named.as_uri(), cache_dir=cache) == cache / named.name


def test_default_cache_dir_and_load_from_url(tmp_path, monkeypatch):
    src = write_weights(tmp_path / "server", "fcn.pth")
    monkeypatch.setenv("SEMSEG_HOME", str(tmp_path / "home"))
    model = Tiny()
    load_checkpoint(model, src.as_uri())
    assert [p.name for p in (tmp_path / "home" / "checkpoints").rglob("*.pth")] == ["fcn.pth"]
    assert torch.equal(model.conv.weight, load_state_dict_file(src)[0]["conv.weight"])


def test_hash_suffix_checked(tmp_path):
    probe = write_weights(tmp_path / "server", "probe.pth")
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    good = probe.rename(probe.with_name(f"pspnet_20200604_192608-{digest[:8]}.pth"))
    cache = tmp_path / "cache"
    assert download_checkpoint(good.as_uri(), cache_dir=cache).read_bytes() == good.read_bytes()

    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    bad = good.rename(good.with_name(f"pspnet_20200604_192608-{wrong}.pth"))
    bad_cache = tmp_path / "bad_cache"
    with pytest.raises(ValueError) as info:
        download_checkpoint(bad.as_uri(), cache_dir=bad_cache)
    message = str(info.value)
    assert bad.as_uri() in message and wrong in message and digest[:8] in message
    assert list(bad_cache.iterdir()) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*TorchScript archive:UserWarning")
def test_torchscript_archive_is_not_run(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(RuntimeError, match="scripted.pt.*TorchScript"):
        load_state_dict_file(path)
