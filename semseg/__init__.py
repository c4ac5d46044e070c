"""semseg: semantic segmentation in plain PyTorch, speaking MMSegmentation's configs and checkpoints."""

from semseg.apis import SegResult, inference_model, init_model, show_result
from semseg.config import Config, load_config
from semseg.engine.checkpoint import load_checkpoint
from semseg.nn.fuse import fuse
from semseg.zoo import list_models

__version__ = "0.1.0"

__all__ = [
    "Config",
    "SegResult",
    "fuse",
    "inference_model",
    "init_model",
    "list_models",
    "load_checkpoint",
    "load_config",
    "show_result",
]
