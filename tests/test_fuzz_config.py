"""Fuzzing the config loader and the start-up check (issue 12): hundreds of mutated configs, truncated and
corrupted config files, and garbage ``--cfg-options``. Each one either loads and passes the check, or ends
in :class:`~semseg.config.ConfigError` with a one-line message; none hangs or ends in a traceback from
inside a library. A mutated key names its path in the error. A model config the check accepts builds (on
the meta device) or fails in semseg's own argument checks, never inside torch."""

from __future__ import annotations

import copy
import random
import signal
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import semseg
from semseg.build import build
from semseg.config import Config, ConfigError, load_config
from semseg.config_check import ConfigWarning, check_config

SEMSEG_DIR = str(Path(semseg.__file__).parent)
SYNTHETIC = Path(SEMSEG_DIR) / "configs/synthetic/fcn_r18-d8_1xb8-600_synthetic-96x96.py"
# a plain FCN, a PSPNet, a cascade (OCRNet on HRNet) and PointRend (two heads, point sampling train_cfg)
NAMES = [str(SYNTHETIC), "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024", "ocrnet_hr18_4xb2-40k_cityscapes-512x1024",
         "pointrend_r50_4xb2-80k_cityscapes-512x1024"]
SECTIONS = ["model", "train_dataloader", "val_dataloader", "train_cfg", "default_hooks", "optim_wrapper",
            "param_scheduler", "val_evaluator"]
WRONG_VALUES = ["five", 3.7, [1, "a"], {"x": 1}, None, True, "", (2,), -3, 0]


@pytest.fixture(autouse=True)
def no_hang():
    """Each test ends within 60 s or fails (a hang is a failure, not a stuck run)."""
    def expired(*_):
        raise TimeoutError("fuzz test took over 60 s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    return {name: load_config(name).to_dict() for name in NAMES}


def keyed_paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every path to a dict key inside ``value`` (list items are passed through by index)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from keyed_paths(item, (*path, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from keyed_paths(item, (*path, index))


def outcome(run) -> ConfigError | None:
    """None when ``run()`` passes, its ConfigError when it fails as documented; anything else fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            run()
        except ConfigError as error:
            message = str(error)
            assert message.strip() and "\n" not in message, f"not a one-line message: {message!r}"
            return error
    return None


def innermost_file(error: BaseException) -> str:
    return traceback.extract_tb(error.__traceback__)[-1].filename


def mutate(cfg: dict, rng: random.Random) -> tuple[str, str, str] | None:
    """One random typo, wrong value or deletion in a checked section; (kind, dotted path, new key or value)."""
    section = rng.choice([s for s in SECTIONS if s in cfg])
    paths = [p for p in keyed_paths(cfg[section], (section,)) if isinstance(p[-1], str)]
    path = rng.choice(paths)
    parent = cfg
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent, tuple):
        return None
    key, kind = path[-1], rng.choice(["typo", "value", "delete"])
    if kind == "typo":
        at = rng.randrange(len(key) + 1)
        new = key[:at] + rng.choice("xqz_") + key[at:]
        parent[new] = parent.pop(key)
        return kind, ".".join(map(str, path[:-1])), new
    if kind == "value":
        parent[key] = copy.deepcopy(rng.choice(WRONG_VALUES))
        return kind, ".".join(map(str, path)), repr(parent[key])
    del parent[key]
    return kind, ".".join(map(str, path)), ""


def test_mutated_configs_end_in_config_errors_naming_the_key(configs: dict[str, dict]) -> None:
    rng = random.Random(12)
    counts = {"rejected": 0, "accepted": 0, "built": 0}
    accepted_typos: list[str] = []
    for _ in range(400):
        name = rng.choice(NAMES)
        cfg = copy.deepcopy(configs[name])
        mutation = mutate(cfg, rng)
        if mutation is None:
            continue
        kind, where, new = mutation
        error = outcome(lambda cfg=cfg: check_config(Config(cfg), training=True))
        if error is not None:
            counts["rejected"] += 1
            if kind == "typo":  # the misspelt key is what the message names
                assert f"{where}.{new}" in str(error) or f"{where}: " in str(error), (mutation, str(error))
            continue
        counts["accepted"] += 1
        if kind == "typo":
            accepted_typos.append(f"{where}.{new}")
        if where.startswith("model"):
            try:
                with torch.device("meta"):
                    build("segmentor", cfg["model"])
                counts["built"] += 1
            except Exception as err:  # semseg's own argument checks only, never a library's traceback
                assert innermost_file(err).startswith(SEMSEG_DIR), (mutation, traceback.format_exc())
                assert not innermost_file(err).endswith("build.py"), (mutation, str(err))
    assert not accepted_typos, accepted_typos
    assert counts["rejected"] > 200 and counts["accepted"] > 50 and counts["built"] > 5, counts


def test_typos_in_every_section_are_found(configs: dict[str, dict]) -> None:
    """Every key of every checked section of the synthetic config, misspelt by one letter, is an error."""
    cfg = configs[str(SYNTHETIC)]
    checked = 0
    for path in keyed_paths({s: cfg[s] for s in SECTIONS}):
        if not isinstance(path[-1], str):
            continue
        mutated = copy.deepcopy(cfg)
        parent = mutated
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, tuple):
            continue
        parent[path[-1] + "q"] = parent.pop(path[-1])
        where = ".".join(map(str, path))
        if len(path) == 1 and path[0] != "train_cfg":  # an unknown top-level key is a warning
            with pytest.warns(ConfigWarning, match=f"'{where}q' is not read by semseg.*did you mean '{where}'"):
                check_config(Config(mutated))
            continue
        error = outcome(lambda mutated=mutated: check_config(Config(mutated), training=True))
        assert error is not None, f"{where}q accepted"
        assert f"{where}q" in str(error) or ".".join(map(str, path[:-1])) in str(error), str(error)
        checked += 1
    assert checked > 80


def test_truncated_and_corrupted_config_files(tmp_path: Path) -> None:
    text = SYNTHETIC.read_text()
    base_dir = tmp_path / "configs"
    (base_dir / "synthetic").mkdir(parents=True)
    (base_dir / "_base_").mkdir()
    (base_dir / "_base_" / "default_runtime.py").write_text(
        (SYNTHETIC.parents[1] / "_base_" / "default_runtime.py").read_text())
    rng = random.Random(5)
    results = {"loaded": 0, "rejected": 0}
    for index in range(200):
        if index < 80:
            mutated = text[:rng.randrange(len(text))].encode()
        elif index < 180:
            data = bytearray(text.encode())
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.choice([rng.randrange(256), *b"()[]{},=:'\"#\n_ .0a"])
            mutated = bytes(data)
        else:
            mutated = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        path = base_dir / "synthetic" / f"mutated_{index}.py"
        path.write_bytes(mutated)
        error = outcome(lambda path=path: check_config(load_config(path)))
        results["rejected" if error else "loaded"] += 1
        if error is not None:
            assert str(path) in str(error) or "model" in str(error) or "." in str(error).split(":")[0], str(error)
    assert results["rejected"] > 100 and results["loaded"] > 5, results


def test_garbage_cfg_options() -> None:
    rng = random.Random(7)
    keys = ["model.decode_head.num_classes", "model.test_cfg.mode", "train_cfg.max_iters", "model.backbone.depth",
            "train_dataloader.batch_size", "model.auxiliary_head.0", "model", "x.y.z", "", ".", "model..backbone",
            "train_dataloader.dataset.pipeline.9.crop_size", "default_hooks.checkpoint.interval", "model.test_cfg"]
    values = ["five", "(1,2", "[1,[2,3]]", "{'a': 1}", "{bad", "None", "-1", "1e400", "nan", "'", "whole",
              "(512, 512)", "", "=", "slide", "1,2,3", "[]", "True"]
    rejected = 0
    for _ in range(250):
        option = f"{rng.choice(keys)}{rng.choice(['=', '==', '', '.mode='])}{rng.choice(values)}"
        error = outcome(lambda option=option: check_config(load_config(SYNTHETIC, [option])))
        rejected += error is not None
    assert rejected > 150
