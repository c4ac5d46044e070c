"""ImageNet-pretrained backbone weights named by configs (``pretrained='open-mmlab://resnet50_v1c'``)."""

from __future__ import annotations

from torch import nn

from semseg.engine.checkpoint import LoadResult, load_checkpoint

_THIRD_PARTY = "https://download.openmmlab.com/pretrain/third_party"
_TORCHVISION = "https://download.pytorch.org/models"

# Published locations of the weights the zoo's configs name (the file names end with their SHA-256 prefix).
PRETRAINED_URLS = {
    "open-mmlab://resnet18_v1c": f"{_THIRD_PARTY}/resnet18_v1c-b5776b93.pth",
    "open-mmlab://resnet50_v1c": f"{_THIRD_PARTY}/resnet50_v1c-2cccc1ad.pth",
    "open-mmlab://resnet101_v1c": f"{_THIRD_PARTY}/resnet101_v1c-e67eebb6.pth",
    "torchvision://resnet18": f"{_TORCHVISION}/resnet18-f37072fd.pth",
    "torchvision://resnet34": f"{_TORCHVISION}/resnet34-b627a593.pth",
    "torchvision://resnet50": f"{_TORCHVISION}/resnet50-0676ba61.pth",
    "torchvision://resnet101": f"{_TORCHVISION}/resnet101-63fe2227.pth",
    "torchvision://resnet152": f"{_TORCHVISION}/resnet152-394f9c45.pth",
}

# Keys a classification checkpoint has and a segmentation backbone does not.
_CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


def pretrained_source(model_cfg: dict) -> str | None:
    """The backbone weights a model config asks for: ``pretrained`` (of the model or the backbone) or a
    ``Pretrained`` backbone init_cfg."""
    backbone = model_cfg.get("backbone") or {}
    if model_cfg.get("pretrained") or backbone.get("pretrained"):
        return model_cfg.get("pretrained") or backbone["pretrained"]
    init_cfg = backbone.get("init_cfg")
    if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
        return init_cfg.get("checkpoint")
    return None


def load_pretrained_backbone(backbone: nn.Module, source: str) -> LoadResult:
    """Load ImageNet weights into a backbone: a ``open-mmlab://`` / ``torchvision://`` name, URL or path.

    The classifier (``fc``) in the file is ignored; any other missing, unexpected or wrongly shaped key is
    an error, raised before anything is loaded.
    """
    location = PRETRAINED_URLS.get(source, source)
    if "://" in location and not location.startswith(("http://", "https://", "file://")):
        raise KeyError(f"unknown pretrained weights {source!r}; known: {', '.join(sorted(PRETRAINED_URLS))}")
    try:
        return load_checkpoint(backbone, location, strict=True, ignore_keys=_CLASSIFIER_KEYS)
    except OSError as error:
        raise OSError(f"could not fetch pretrained backbone weights {source!r} from {location}: {error}. "
                      "Download the file and pass its path, or train from scratch with "
                      "--cfg-options model.pretrained=None") from error
    except RuntimeError as error:
        raise RuntimeError(f"pretrained weights {source!r} do not fit the backbone: {error}") from error
