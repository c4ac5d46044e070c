"""ImageNet-pretrained backbone weights named by configs, loaded as MMSegmentation 1.2.2 (mmengine) loads them.

A config names them as ``pretrained='open-mmlab://resnet50_v1c'`` (of the model or the backbone) or as
``backbone.init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``. What each kind of name means:

- ``open-mmlab://NAME`` (alias ``openmmlab://``) and ``torchvision://NAME`` (alias ``modelzoo://``): the file
  at the name's URL (mmengine's ``hub/openmmlab.json`` and torchvision's tables), its keys as they are.
- ``mmcls://NAME``: the file at the name's URL (mmengine's ``hub/mmcls.json``), of which only the keys under
  ``backbone.`` are kept, with that prefix removed; the classification head and the rest are dropped.
- a path or an ``http(s)://`` / ``file://`` URL: the file, its keys as they are.
- an init_cfg ``prefix`` (``'backbone.'``): then only the keys under the prefix, with it removed (a file with
  none is an error, as in mmengine).

mmengine's ``PretrainedInit`` then loads with ``strict=False``: backbone keys the file lacks keep their
initial values and keys the backbone lacks are ignored, each with a logged warning. Here every backbone key
must come from the file (a missing key or a wrongly shaped one is an error raised before anything is
loaded), except BatchNorm's ``num_batches_tracked``, which some published files lack and which mmengine
leaves at its initial value too. Keys the backbone lacks are dropped: the known ImageNet classifier of the
source silently (:data:`PRETRAINED`), any other with a warning that lists them.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import NamedTuple

from torch import Tensor, nn

from semseg.engine.checkpoint import LoadResult, download_checkpoint, load_state_dict_file
from semseg.engine.converters import fit_pretrained

_THIRD_PARTY = "https://download.openmmlab.com/pretrain/third_party"
_TORCHVISION = "https://download.pytorch.org/models"
_MMCLS = "https://download.openmmlab.com/mmclassification/v0"

# Key prefixes of the ImageNet classifier each source carries beside the segmentation backbone's keys.
RESNET_CLASSIFIER = ("fc.",)
# The official HRNet classification model (HRNet-Image-Classification): its head over the four branches.
HRNET_CLASSIFIER = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
# mmcls's MobileNetV2, after mmcls:// keeps its backbone: the 1x1 conv to 1280 channels (``conv2``) that
# MMSegmentation's MobileNetV2 does not have.
MMCLS_MOBILENET_V2_CLASSIFIER = ("conv2.",)
# Files already in MMSegmentation's layout without a classifier.
NO_CLASSIFIER: tuple[str, ...] = ()


class PretrainedWeights(NamedTuple):
    """Where a named file lives and which of its key prefixes are the ImageNet classifier."""

    url: str
    classifier: tuple[str, ...]


# Every name the zoo's configs use (and the rest of their families); the file names end with their
# SHA-256 prefix. URLs as in mmengine's hub tables (openmmlab.json, mmcls.json) and torchvision's.
PRETRAINED = {
    "open-mmlab://resnet18_v1c": PretrainedWeights(f"{_THIRD_PARTY}/resnet18_v1c-b5776b93.pth", RESNET_CLASSIFIER),
    "open-mmlab://resnet50_v1c": PretrainedWeights(f"{_THIRD_PARTY}/resnet50_v1c-2cccc1ad.pth", RESNET_CLASSIFIER),
    "open-mmlab://resnet101_v1c": PretrainedWeights(
        f"{_THIRD_PARTY}/resnet101_v1c-e67eebb6.pth", RESNET_CLASSIFIER
    ),
    # Converted from the official ResNeSt weights into MMSegmentation's layout (conv1 -> stem, bn1 -> stem.7),
    # without the classifier and without num_batches_tracked.
    "open-mmlab://resnest50": PretrainedWeights(f"{_THIRD_PARTY}/resnest50_d2-7497a55b.pth", RESNET_CLASSIFIER),
    "open-mmlab://resnest101": PretrainedWeights(f"{_THIRD_PARTY}/resnest101_d2-f3b931b2.pth", RESNET_CLASSIFIER),
    "open-mmlab://resnest200": PretrainedWeights(f"{_THIRD_PARTY}/resnest200_d2-ca88e41f.pth", RESNET_CLASSIFIER),
    "open-mmlab://msra/hrnetv2_w18_small": PretrainedWeights(
        f"{_THIRD_PARTY}/hrnetv2_w18_small-b5a04e21.pth", HRNET_CLASSIFIER
    ),
    "open-mmlab://msra/hrnetv2_w18": PretrainedWeights(f"{_THIRD_PARTY}/hrnetv2_w18-00eb2006.pth", HRNET_CLASSIFIER),
    "open-mmlab://msra/hrnetv2_w48": PretrainedWeights(f"{_THIRD_PARTY}/hrnetv2_w48-d2186c55.pth", HRNET_CLASSIFIER),
    "open-mmlab://contrib/mobilenet_v3_large": PretrainedWeights(
        f"{_THIRD_PARTY}/mobilenet_v3_large-bc2c3fd3.pth", NO_CLASSIFIER
    ),
    "open-mmlab://contrib/mobilenet_v3_small": PretrainedWeights(
        f"{_THIRD_PARTY}/mobilenet_v3_small-47085aa1.pth", NO_CLASSIFIER
    ),
    "mmcls://mobilenet_v2": PretrainedWeights(
        f"{_MMCLS}/mobilenet_v2/mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth", MMCLS_MOBILENET_V2_CLASSIFIER
    ),
    "torchvision://resnet18": PretrainedWeights(f"{_TORCHVISION}/resnet18-f37072fd.pth", RESNET_CLASSIFIER),
    "torchvision://resnet34": PretrainedWeights(f"{_TORCHVISION}/resnet34-b627a593.pth", RESNET_CLASSIFIER),
    "torchvision://resnet50": PretrainedWeights(f"{_TORCHVISION}/resnet50-0676ba61.pth", RESNET_CLASSIFIER),
    "torchvision://resnet101": PretrainedWeights(f"{_TORCHVISION}/resnet101-63fe2227.pth", RESNET_CLASSIFIER),
    "torchvision://resnet152": PretrainedWeights(f"{_TORCHVISION}/resnet152-394f9c45.pth", RESNET_CLASSIFIER),
}
PRETRAINED_URLS = {name: weights.url for name, weights in PRETRAINED.items()}

# Other spellings mmengine accepts for a scheme.
_SCHEME_ALIASES = {"openmmlab://": "open-mmlab://", "modelzoo://": "torchvision://"}
_MMCLS_SCHEME = "mmcls://"
_MMCLS_BACKBONE = "backbone."
_URL_SCHEMES = ("http://", "https://", "file://")
# What a path or URL drops silently: a torchvision-style classifier.
_FILE_CLASSIFIER = RESNET_CLASSIFIER
_NUM_BATCHES_TRACKED = "num_batches_tracked"


# ----------------------------------------------------------------------------------------------------------
# Reading configs
# ----------------------------------------------------------------------------------------------------------


def _pretrained_init(backbone_cfg: dict) -> dict | None:
    """The backbone's ``Pretrained`` init_cfg (a dict, or the entry of a list), if any."""
    init_cfg = backbone_cfg.get("init_cfg")
    for cfg in init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]:
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            return cfg
    return None


def pretrained_source(model_cfg: dict) -> str | None:
    """The backbone weights a model config asks for: ``pretrained`` (of the model or the backbone) or a
    ``Pretrained`` backbone init_cfg."""
    backbone = model_cfg.get("backbone") or {}
    if model_cfg.get("pretrained") or backbone.get("pretrained"):
        return model_cfg.get("pretrained") or backbone["pretrained"]
    init_cfg = _pretrained_init(backbone)
    return init_cfg.get("checkpoint") if init_cfg else None


def pretrained_prefix(model_cfg: dict) -> str | None:
    """The ``prefix`` of the backbone's ``Pretrained`` init_cfg (``'backbone.'`` to take a classifier's
    backbone out of its file), or None; ``pretrained`` has no prefix."""
    backbone = model_cfg.get("backbone") or {}
    if model_cfg.get("pretrained") or backbone.get("pretrained"):
        return None
    init_cfg = _pretrained_init(backbone)
    return init_cfg.get("prefix") if init_cfg else None


# ----------------------------------------------------------------------------------------------------------
# Resolving names, converting key layouts (pure functions)
# ----------------------------------------------------------------------------------------------------------


def canonical_name(source: str) -> str:
    """``source`` with mmengine's alternative scheme spellings replaced (``openmmlab://`` -> ``open-mmlab://``,
    ``modelzoo://`` -> ``torchvision://``)."""
    for alias, scheme in _SCHEME_ALIASES.items():
        if source.startswith(alias):
            return scheme + source[len(alias):]
    return source


def resolve_pretrained(source: str) -> str:
    """The URL of a named file, or ``source`` itself for a path or an http(s)/file URL.

    Raises:
        KeyError: an unknown ``scheme://name``; the message lists the known names and the closest ones.
    """
    name = canonical_name(source)
    if name in PRETRAINED:
        return PRETRAINED[name].url
    if "://" in name and not name.startswith(_URL_SCHEMES):
        close = difflib.get_close_matches(name, list(PRETRAINED), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown pretrained weights {source!r}{hint} Known: {', '.join(sorted(PRETRAINED))}")
    return source


def mmcls_backbone(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """What the ``mmcls://`` scheme keeps of a classifier's file: the ``backbone.*`` keys, prefix removed."""
    return {k[len(_MMCLS_BACKBONE):]: v for k, v in state_dict.items() if k.startswith(_MMCLS_BACKBONE)}


def select_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The keys under an init_cfg ``prefix`` (a ``.`` is appended if missing), with the prefix removed.

    Raises:
        KeyError: no key starts with the prefix.
    """
    prefix = prefix if prefix.endswith(".") else prefix + "."
    selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise KeyError(f"no key of the pretrained file starts with the prefix {prefix!r}")
    return selected


def split_classifier(
    state_dict: dict[str, Tensor], classifier: tuple[str, ...]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(backbone keys, classifier keys)``: the second holds the keys under the ``classifier`` prefixes."""
    kept = {k: v for k, v in state_dict.items() if not k.startswith(classifier)}
    return kept, {k: v for k, v in state_dict.items() if k.startswith(classifier)}


def convert_pretrained(
    state_dict: dict[str, Tensor], source: str, prefix: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A pretrained file's keys in the backbone's layout: ``(backbone keys, dropped classifier keys)``.

    Applies what the source's scheme does (``mmcls://`` keeps ``backbone.*``), then the init_cfg ``prefix``,
    then splits off the source's ImageNet classifier (for a path or URL: a torchvision-style ``fc``). Keys
    dropped by the scheme or the prefix appear in neither dict, as in mmengine.
    """
    name = canonical_name(source)
    if name.startswith(_MMCLS_SCHEME):
        state_dict = mmcls_backbone(state_dict)
    if prefix is not None:
        state_dict = select_prefix(state_dict, prefix)
    weights = PRETRAINED.get(name)
    return split_classifier(state_dict, weights.classifier if weights else _FILE_CLASSIFIER)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _fetch(source: str, location: str) -> tuple[dict[str, Tensor], dict]:
    """The file's state dict and meta, downloaded (and cached) first when ``location`` is a URL."""
    try:
        path = download_checkpoint(location) if location.startswith(_URL_SCHEMES) else Path(location)
        return load_state_dict_file(path)
    except OSError as error:
        raise OSError(f"could not fetch pretrained backbone weights {source!r} from {location}: {error}. "
                      "Download the file and pass its path, or train from scratch with "
                      "--cfg-options model.pretrained=None") from error


def load_pretrained_backbone(backbone: nn.Module, source: str, prefix: str | None = None) -> LoadResult:
    """Load ImageNet weights into a backbone: a name (``open-mmlab://``, ``mmcls://``, ``torchvision://``),
    an http(s)/file URL or a path; ``prefix`` as in a ``Pretrained`` init_cfg.

    Every backbone key must come from the file (BatchNorm's ``num_batches_tracked`` may be absent and then
    keeps its value); a missing or wrongly shaped key raises ``RuntimeError`` before anything is loaded.
    The source's classifier is dropped; other keys the backbone lacks are dropped with a warning and
    returned in ``unexpected``. Transformer files go through :func:`semseg.engine.converters.fit_pretrained`
    first: timm's ViT/DeiT and the official Swin layouts are converted, position embeddings and relative
    position bias tables resized, and the keys MMSegmentation leaves at their initial values (Swin's output
    norms) may be absent.
    """
    location = resolve_pretrained(source)
    state_dict, meta = _fetch(source, location)
    try:
        state_dict, _ = convert_pretrained(state_dict, source, prefix)
    except KeyError as error:
        raise RuntimeError(f"pretrained weights {source!r} do not fit the backbone: {error}") from error
    fitted = fit_pretrained(backbone, state_dict)  # transformers: source layouts converted, shapes resized
    state_dict = fitted.state_dict
    own = backbone.state_dict()
    optional = re.compile("|".join(fitted.optional)) if fitted.optional else None
    result = LoadResult(
        missing=[k for k in own if k not in state_dict and not k.endswith(_NUM_BATCHES_TRACKED)
                 and not (optional and optional.fullmatch(k))],
        unexpected=[k for k in state_dict if k not in own],
        mismatched=[(k, tuple(v.shape), tuple(own[k].shape))
                    for k, v in state_dict.items() if k in own and v.shape != own[k].shape],
        meta=meta,
    )
    if result.missing or result.mismatched:
        raise RuntimeError(f"pretrained weights {source!r} do not fit the backbone "
                           f"{type(backbone).__name__}:\n{result.summary()}")
    if result.unexpected:
        warnings.warn(f"pretrained weights {source!r}: keys {type(backbone).__name__} does not have were "
                      f"ignored\n{result.summary()}", stacklevel=2)
    backbone.load_state_dict({**own, **{k: v for k, v in state_dict.items() if k in own}}, strict=True)
    return result
