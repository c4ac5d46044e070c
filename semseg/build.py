"""``type`` name -> class tables, one per kind, and the ``build`` helper.

A config names a class by ``type='PSPHead'``. Each table maps that name to ``"module:Class"`` and imports
the module only when a config asks for it, so building a model never imports datasets (and the reverse).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

BACKBONES = {
    "ResNet": "semseg.models.backbones.resnet:ResNet",
    "ResNetV1c": "semseg.models.backbones.resnet:ResNetV1c",
    "ResNetV1d": "semseg.models.backbones.resnet:ResNetV1d",
    "ResNeSt": "semseg.models.backbones.resnest:ResNeSt",
    "HRNet": "semseg.models.backbones.hrnet:HRNet",
    "MobileNetV2": "semseg.models.backbones.mobilenet_v2:MobileNetV2",
    "MobileNetV3": "semseg.models.backbones.mobilenet_v3:MobileNetV3",
    "CGNet": "semseg.models.backbones.cgnet:CGNet",
    "FastSCNN": "semseg.models.backbones.fast_scnn:FastSCNN",
    "BiSeNetV2": "semseg.models.backbones.bisenetv2:BiSeNetV2",
    "UNet": "semseg.models.backbones.unet:UNet",
    "VisionTransformer": "semseg.models.backbones.vit:VisionTransformer",
    "SwinTransformer": "semseg.models.backbones.swin:SwinTransformer",
}

NECKS = {
    "FPN": "semseg.models.necks.fpn:FPN",
    "MultiLevelNeck": "semseg.models.necks.multilevel:MultiLevelNeck",
    "MLANeck": "semseg.models.necks.mla:MLANeck",
}

HEADS = {
    "FCNHead": "semseg.models.heads.fcn:FCNHead",
    "PSPHead": "semseg.models.heads.psp:PSPHead",
    "ASPPHead": "semseg.models.heads.aspp:ASPPHead",
    "DepthwiseSeparableASPPHead": "semseg.models.heads.sep_aspp:DepthwiseSeparableASPPHead",
    "UPerHead": "semseg.models.heads.uper:UPerHead",
    "PSAHead": "semseg.models.heads.psa:PSAHead",
    "NLHead": "semseg.models.heads.nl:NLHead",
    "DNLHead": "semseg.models.heads.dnl:DNLHead",
    "GCHead": "semseg.models.heads.gc:GCHead",
    "CCHead": "semseg.models.heads.cc:CCHead",
    "DAHead": "semseg.models.heads.da:DAHead",
    "EMAHead": "semseg.models.heads.ema:EMAHead",
    "ANNHead": "semseg.models.heads.ann:ANNHead",
    "LRASPPHead": "semseg.models.heads.lraspp:LRASPPHead",
    "DepthwiseSeparableFCNHead": "semseg.models.heads.sep_fcn:DepthwiseSeparableFCNHead",
    "FPNHead": "semseg.models.heads.fpn:FPNHead",
    "PointHead": "semseg.models.heads.point:PointHead",
    "EncHead": "semseg.models.heads.enc:EncHead",
    "APCHead": "semseg.models.heads.apc:APCHead",
    "DMHead": "semseg.models.heads.dm:DMHead",
    "OCRHead": "semseg.models.heads.ocr:OCRHead",
    "SETRUPHead": "semseg.models.heads.setr_up:SETRUPHead",
    "SETRMLAHead": "semseg.models.heads.setr_mla:SETRMLAHead",
}

LOSSES = {
    "CrossEntropyLoss": "semseg.models.losses:CrossEntropyLoss",
    "DiceLoss": "semseg.models.losses:DiceLoss",
}

SAMPLERS = {
    "OHEMPixelSampler": "semseg.models.sampler:OHEMPixelSampler",
}

SEGMENTORS = {
    "EncoderDecoder": "semseg.models.segmentor:EncoderDecoder",
    "CascadeEncoderDecoder": "semseg.models.cascade:CascadeEncoderDecoder",
}

DATA_PREPROCESSORS = {
    "SegDataPreProcessor": "semseg.models.preprocessor:SegDataPreProcessor",
}

TRANSFORMS = {
    name: f"semseg.data.transforms:{name}"
    for name in ("LoadImageFromFile", "LoadImageFromNDArray", "LoadAnnotations", "Resize", "RandomResize",
                 "RandomChoiceResize", "RandomCrop", "RandomFlip", "RandomRotate", "Pad", "PhotoMetricDistortion",
                 "GenerateEdge", "TestTimeAug", "PackSegInputs")
}

# torch.optim's optimizers under their own names (mmengine registers the same ones).
OPTIMIZERS = {
    name: f"torch.optim:{name}"
    for name in ("SGD", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "RMSprop", "Rprop", "ASGD", "NAdam",
                 "RAdam")
}

OPTIM_WRAPPERS = {
    "OptimWrapper": "semseg.engine.optim:OptimWrapper",
    "AmpOptimWrapper": "semseg.engine.optim:AmpOptimWrapper",
}

SCHEDULERS = {
    name: f"semseg.engine.schedulers:{name}"
    for name in ("PolyLR", "PolyLRRatio", "LinearLR", "ConstantLR", "StepLR", "MultiStepLR", "ExponentialLR",
                 "CosineAnnealingLR")
}

DATASETS = {
    **{name: f"semseg.data.datasets.standard:{name}"
       for name in ("ADE20KDataset", "PascalVOCDataset", "PascalContextDataset", "PascalContextDataset59",
                    "COCOStuffDataset", "LoveDADataset", "PotsdamDataset", "ISPRSDataset", "iSAIDDataset",
                    "DRIVEDataset", "STAREDataset", "ChaseDB1Dataset", "HRFDataset", "MapillaryDataset_v1",
                    "MapillaryDataset_v2", "BDD100KDataset")},
    **{name: f"semseg.data.datasets.cityscapes:{name}"
       for name in ("CityscapesDataset", "DarkZurichDataset", "NightDrivingDataset")},
    "BaseSegDataset": "semseg.data.datasets.base:BaseSegDataset",
    "SyntheticDataset": "semseg.data.datasets.synthetic:SyntheticDataset",
    "RepeatDataset": "semseg.data.datasets.wrappers:RepeatDataset",
    "ConcatDataset": "semseg.data.datasets.wrappers:ConcatDataset",
}

DATA_SAMPLERS = {
    "InfiniteSampler": "semseg.data.loader:InfiniteSampler",
    "DefaultSampler": "semseg.data.loader:DefaultSampler",
}

TABLES = {
    "backbone": BACKBONES,
    "neck": NECKS,
    "head": HEADS,
    "loss": LOSSES,
    "sampler": SAMPLERS,
    "segmentor": SEGMENTORS,
    "data_preprocessor": DATA_PREPROCESSORS,
    "transform": TRANSFORMS,
    "optimizer": OPTIMIZERS,
    "optim_wrapper": OPTIM_WRAPPERS,
    "scheduler": SCHEDULERS,
    "dataset": DATASETS,
    "data_sampler": DATA_SAMPLERS,
}


def lookup(kind: str, type_name: str) -> type:
    """The class registered as ``type_name`` in the ``kind`` table; unknown names suggest the nearest."""
    table = TABLES[kind]
    if type_name not in table:
        close = difflib.get_close_matches(str(type_name), table, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown {kind} type {type_name!r}{hint} (known: {', '.join(sorted(table)) or 'none'})")
    module_name, class_name = table[type_name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build(kind: str, cfg: dict, **defaults: Any) -> Any:
    """Build the object a config dict describes: ``cfg['type']`` picks the class, the rest are kwargs.

    ``defaults`` fill in keys the config leaves out. A keyword the class does not take is reported with
    the nearest valid one.
    """
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise TypeError(f"a {kind} config must be a dict with a 'type' key, got {cfg!r}")
    kwargs = {**defaults, **{k: v for k, v in cfg.items() if k != "type"}}
    cls = lookup(kind, cfg["type"])
    valid = accepted_arguments(cls)
    if valid is not None:
        for key in kwargs:
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"{cfg['type']} has no argument {key!r}{hint} "
                                f"(arguments: {', '.join(sorted(valid))})")
    return cls(**kwargs)


def accepted_arguments(cls: type) -> set[str] | None:
    """The keyword arguments ``cls(...)`` accepts: its ``__init__``'s, plus those of the parents it
    forwards ``**kwargs`` to; ``None`` when that cannot be told (``**kwargs`` not passed to a parent)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        if klass is object:  # the **kwargs go somewhere else than a parent's __init__
            return None
        params = inspect.signature(klass.__init__).parameters
        names.update(n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL
                     and p.kind is not inspect.Parameter.VAR_KEYWORD)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return names
    return None
