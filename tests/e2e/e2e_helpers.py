"""Shared helpers for the end-to-end tests: run ``semseg`` in a subprocess on the synthetic config.

The subprocesses run with one OpenMP thread: on a shared 2-core machine a second busy process makes
OpenMP's spinning threads wait on each other, which slows the small synthetic model ~100-fold.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "semseg" / "configs" / "synthetic" / "fcn_r18-d8_1xb8-600_synthetic-96x96.py"

# A small, quick run: batch 4, logs every iteration; on the synthetic config, 8 val images.
SMALL = ["train_dataloader.batch_size=4", "default_hooks.logger.interval=1"]
SMALL_SYNTHETIC = ["val_dataloader.dataset.num_samples=8", "test_dataloader.dataset.num_samples=8"]


def env(**extra: str) -> dict[str, str]:
    """The environment for a ``semseg`` subprocess: this checkout first on the path, one thread."""
    out = dict(os.environ)
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out.update(extra)
    return out


def semseg_command(*args: str | Path) -> list[str]:
    """``python -m semseg.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "semseg.cli", *map(str, args)]


def run_semseg(*args: str | Path, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``semseg ARGS`` to the end; with ``check``, a non-zero exit fails with the output's tail."""
    proc = subprocess.run(semseg_command(*args), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"semseg {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def train_args(work_dir: Path, *options: str, config: Path = CONFIG, flags: tuple = ()) -> list[str | Path]:
    """``train CONFIG --work-dir W FLAGS... --cfg-options SMALL... OPTIONS...``."""
    small = SMALL + (SMALL_SYNTHETIC if config == CONFIG else [])
    return ["train", config, "--work-dir", work_dir, *flags, "--cfg-options", *small, *options]


def records(work_dir: Path) -> list[dict]:
    """Every record of the work dir's JSON-lines logs, oldest log first."""
    rows = []
    for path in sorted(work_dir.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def checkpoints(work_dir: Path) -> dict[int, Path]:
    """``iter_N.pth`` files of a work dir by N."""
    return {int(p.stem.split("_")[1]): p for p in work_dir.glob("iter_*.pth")}


def load(path: Path) -> dict:
    """A checkpoint as the contract says it must load: ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def free_port() -> int:
    """A TCP port nothing listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def folder_config(path: Path, data_root: Path, num_classes: int = 5) -> Path:
    """Write a config at ``path``: the synthetic config with its train and val sets read as a folder
    dataset (``BaseSegDataset``) from ``data_root`` (the layout ``write_synthetic_dataset`` writes)."""
    from semseg.data.datasets.synthetic import synthetic_metainfo

    metainfo = {"classes": list(synthetic_metainfo(num_classes)["classes"]),
                "palette": synthetic_metainfo(num_classes)["palette"]}

    def dataset(split: str, pipeline: str) -> str:
        return (f"dict(_delete_=True, type='BaseSegDataset', data_root={str(data_root)!r}, img_suffix='.png', "
                f"data_prefix=dict(img_path='img_dir/{split}', seg_map_path='ann_dir/{split}'), "
                f"metainfo={metainfo!r}, pipeline={pipeline})")

    path.write_text(
        f"_base_ = [{str(CONFIG)!r}]\n"
        f"train_dataloader = dict(dataset={dataset('train', '{{_base_.train_pipeline}}')})\n"
        f"val_dataloader = dict(dataset={dataset('val', '{{_base_.test_pipeline}}')})\n"
        "test_dataloader = val_dataloader\n")
    return path
