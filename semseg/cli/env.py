"""``semseg env``: versions, devices, threads and optional extras, for bug reports and set-up checks."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
from importlib import metadata

EPILOG = """\
examples:
  semseg env            # paste the output into a bug report
  semseg env --json     # the same facts as JSON
"""

# Optional extras: the module to import -> (the distribution whose version is shown, what it enables).
EXTRAS = {
    "safetensors": ("safetensors", "reading and writing .safetensors checkpoints"),
    "matplotlib": ("matplotlib", "plots: plot-log, confusion matrices, browse-dataset"),
    "onnx": ("onnx", "export --format onnx"),
    "onnxruntime": ("onnxruntime", "checking ONNX exports"),
    "mmseg": ("mmsegmentation", "the MMSegmentation 1.2.2 oracle of the conformance tests"),
}
# Environment variables that change what semseg or torch does.
ENV_VARS = ("SEMSEG_HOME", "SEMSEG_WEIGHTS_MIRROR", "SEMSEG_DEBUG", "SEMSEG_DIST_TIMEOUT", "SEMSEG_THREADS", "OMP_NUM_THREADS",
            "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _extra(module: str, distribution: str) -> str:
    """``'1.2.3'`` when the module imports, else why not (``'not installed'`` or the import error)."""
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        importlib.import_module(module)
    except Exception as error:  # a broken install is worth reporting, whatever it raises
        return f"installed but not importable: {type(error).__name__}: {error}"
    return _version(distribution) or "importable"


def collect() -> dict[str, dict[str, object]]:
    """The report as sections of name -> value."""
    import cv2
    import numpy as np
    import torch

    import semseg
    from semseg.engine.checkpoint import weights_cache_dir

    versions = {
        "semseg": semseg.__version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "platform": platform.platform(),
    }
    cuda = torch.cuda.is_available()
    devices: dict[str, object] = {
        "cuda available": cuda,
        "cuda (torch built with)": torch.version.cuda or "none (CPU build)",
        "mps available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if cuda:
        devices["cudnn"] = torch.backends.cudnn.version()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices[f"gpu {index}"] = (f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                       f"compute capability {props.major}.{props.minor}")
    threads = {
        "torch intra-op threads": torch.get_num_threads(),
        "torch inter-op threads": torch.get_num_interop_threads(),
        "cpu count": os.cpu_count(),
    }
    variables = {name: os.environ.get(name, "(unset)") for name in ENV_VARS}
    variables["weights cache"] = str(weights_cache_dir())
    extras = {module: _extra(module, dist) for module, (dist, _) in EXTRAS.items()}
    return {"versions": versions, "devices": devices, "threads": threads, "environment": variables,
            "optional extras": extras}


def run(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    width = max(len(key) for section in report.values() for key in section)
    for title, section in report.items():
        print(f"{title}:")
        for key, value in section.items():
            use = f"  ({EXTRAS[key][1]})" if title == "optional extras" else ""
            print(f"  {key.ljust(width)}  {value}{use}")
    return 0


def register(commands) -> None:
    """Add the subcommand to ``commands`` (an argparse subparsers action)."""
    env = commands.add_parser(
        "env", help="print versions, devices, threads and optional extras",
        description="Print what a bug report needs: versions of semseg, Python, PyTorch, NumPy and OpenCV; "
                    "CUDA/MPS availability and GPU names; thread settings; semseg's environment variables "
                    "and weights cache; which optional extras import.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env.add_argument("--json", action="store_true", help="print the report as JSON")
    env.set_defaults(func=run)
