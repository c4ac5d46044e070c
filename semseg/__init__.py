"""semseg: semantic segmentation in plain PyTorch, speaking MMSegmentation's configs and checkpoints.

The names below load on first use (PEP 562), so that ``import semseg`` does not import torch: the
``semseg`` command sets OpenMP's wait policy before torch loads (see ``semseg.threads``)."""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "semseg.config",
    "SegResult": "semseg.apis",
    "fuse": "semseg.nn.fuse",
    "inference_model": "semseg.apis",
    "init_model": "semseg.apis",
    "list_models": "semseg.zoo",
    "load_checkpoint": "semseg.engine.checkpoint",
    "load_config": "semseg.config",
    "show_result": "semseg.apis",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """A public name, imported from its module on first use; or a submodule (``semseg.config``)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
