"""Start-up checks of a loaded config, before any work is done.

A key that the thing it configures does not take (a constructor argument, a ``train_cfg`` / ``test_cfg`` /
dataloader / hook field), a value of the wrong type, a random crop larger than any image the pipeline
makes, and ``num_classes`` disagreeing between the heads and the dataset are each a one-line
:class:`~semseg.config.ConfigError` naming the key's path (``model.decode_head.num_clases``) and the
nearest valid key. Top-level keys MMSegmentation's runner reads and semseg does not need (``visualizer``,
``log_processor``, ...) and the helper variables of MMSegmentation's config files (``crop_size``,
``norm_cfg``, ...) are accepted; any other top-level key gets a :class:`ConfigWarning`.

Nothing here builds a model or reads a dataset: a constructor's accepted arguments and their types are
read from its signature (:func:`semseg.build.accepted_arguments`, its type hints).
"""

from __future__ import annotations

import collections.abc as abc
import difflib
import functools
import inspect
import logging
import os
import types
import typing
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from semseg.build import TABLES, accepted_arguments, build, lookup
from semseg.config import Config, ConfigError

__all__ = ["ConfigWarning", "check_config"]

log = logging.getLogger(__name__)


class ConfigWarning(UserWarning):
    """A config key that nothing reads (an unknown top-level key, a helper variable set by --cfg-options)."""


# Top-level keys semseg reads.
SEMSEG_KEYS = frozenset({
    "model", "train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "val_cfg", "test_cfg",
    "optim_wrapper", "param_scheduler", "val_evaluator", "test_evaluator", "default_hooks", "randomness",
    "env_cfg", "load_from", "resume", "work_dir", "find_unused_parameters", "tta_pipeline",
})
# Top-level keys MMSegmentation's runner (mmengine's Runner.from_cfg and Runner) and its tools/test.py read;
# semseg does not need them and accepts them as they are.
RUNNER_KEYS = frozenset({
    "auto_scale_lr", "custom_hooks", "data_preprocessor", "launcher", "log_processor", "log_level", "visualizer",
    "default_scope", "experiment_name", "model_wrapper_cfg", "sync_bn", "activation_checkpointing",
    "efficient_conv_bn_eval", "compile", "tta_model",
})
# Helper variables of MMSegmentation 1.2.2's config files: values the file's own code uses to build the
# sections above; nothing reads them afterwards.
HELPER_VARIABLES = frozenset({
    "norm_cfg", "backbone_norm_cfg", "ham_norm_cfg", "crop_size", "num_classes", "dataset_type", "data_root",
    "train_pipeline", "test_pipeline", "img_ratios", "img_scale", "optimizer", "vis_backends", "total_iters",
    "iters", "checkpoint", "checkpoint_file", "pretrained", "dataset_train", "dataset_aug", "metainfo",
    "class_weight", "num_stages", "conv_kernel_size", "depths", "embed_multi", "backbone_norm_multi",
    "backbone_embed_multi", "custom_keys", "stable_diffusion_cfg", "img_prefix", "train_ann", "val_ann",
    "used_labels", "albu_train_transforms", "runner", "fp16", "models",
})

# Fields of the objects that are not semseg classes: name -> {field: expected type (None: any)}.
_INT, _NUM, _BOOL, _STR = (int,), (int, float), (bool,), (str,)
_OPT_INT, _OPT_STR = (int, type(None)), (str, type(None))
_SEQ = (list, tuple)
_PLAIN = (str, int, float, list, tuple, type(None))
LOOPS = {
    "IterBasedTrainLoop": {"max_iters": _INT, "val_begin": _INT, "val_interval": _INT, "dynamic_intervals": None},
    "EpochBasedTrainLoop": {"max_epochs": _INT, "val_begin": _INT, "val_interval": _INT,
                            "dynamic_intervals": None},
    "ValLoop": {"fp16": _BOOL},
    "TestLoop": {"fp16": _BOOL},
}
LOOP_DEFAULTS = {"train_cfg": "IterBasedTrainLoop", "val_cfg": "ValLoop", "test_cfg": "TestLoop"}
# mmengine's hooks (facts: their constructors' arguments).
HOOKS = {
    "IterTimerHook": {},
    "ParamSchedulerHook": {},
    "DistSamplerSeedHook": {},
    "RuntimeInfoHook": {},
    "LoggerHook": {"interval": _INT, "ignore_last": _BOOL, "interval_exp_name": _INT, "out_dir": _OPT_STR,
                   "out_suffix": None, "keep_local": _BOOL, "file_client_args": None,
                   "log_metric_by_epoch": _BOOL, "backend_args": None},
    "CheckpointHook": {"interval": _INT, "by_epoch": _BOOL, "save_optimizer": _BOOL, "save_param_scheduler": _BOOL,
                       "out_dir": _OPT_STR, "max_keep_ckpts": _INT, "save_last": _BOOL,
                       "save_best": (str, list, tuple, type(None)), "rule": None, "greater_keys": None,
                       "less_keys": None, "file_client_args": None, "filename_tmpl": _OPT_STR,
                       "backend_args": None, "published_keys": None, "save_begin": _INT},
    "SegVisualizationHook": {"draw": _BOOL, "interval": _INT, "show": _BOOL, "wait_time": _NUM, "backend_args": None},
}
# The names mmengine's runner gives its default hooks (default_hooks entries merge with them by name).
DEFAULT_HOOK_NAMES = ("runtime_info", "timer", "sampler_seed", "logger", "param_scheduler", "checkpoint",
                      "visualization")
DATALOADER = {"batch_size": _INT, "num_workers": _INT, "persistent_workers": _BOOL, "pin_memory": _BOOL,
              "drop_last": _BOOL, "prefetch_factor": _OPT_INT, "collate_fn": (dict, str), "batch_sampler": None,
              "sampler": (dict,), "dataset": (dict,)}
# model.test_cfg: the segmentor's inference (semseg.models.inference), PointRend's subdivision, the
# whole-inference fallback; model.train_cfg: PointRend's point sampling.
MODEL_TEST_CFG = {"mode": _STR, "crop_size": _SEQ + _INT, "stride": _SEQ + _INT, "batch_size": _INT,
                  "accumulate_device": _OPT_STR, "accumulate_dtype": _OPT_STR, "subdivision_steps": _INT,
                  "subdivision_num_points": _INT, "scale_factor": _NUM, "fallback_slide": _BOOL,
                  "max_whole_pixels": _OPT_INT}
# HRNet's ``extra``: one dict per stage (mmseg's HRNet facts).
HRNET_STAGE = {"num_modules": _INT, "num_branches": _INT, "block": _STR, "num_blocks": _SEQ, "num_channels": _SEQ,
               "fuse_method": _STR, "multiscale_output": _BOOL}
HRNET_STAGES = ("stage1", "stage2", "stage3", "stage4")
# Arguments that are probabilities (dropout, drop path, flip): at most 1 (MMSegmentation's heads take a
# dropout_ratio <= 0 as no dropout).
PROBABILITY_SUFFIXES = ("dropout_ratio", "drop_rate", "drop_path_rate", "prob")
MODEL_TRAIN_CFG = {"num_points": _INT, "oversample_ratio": _NUM, "importance_sample_ratio": _NUM, "sampler": None}
# mmengine's DefaultOptimWrapperConstructor paramwise_cfg, and the layer-decay constructors' fields.
PARAMWISE_CFG = {"custom_keys": (dict,), "bias_lr_mult": _NUM, "bias_decay_mult": _NUM, "norm_decay_mult": _NUM,
                 "dwconv_decay_mult": _NUM, "dcn_offset_lr_mult": _NUM, "flat_decay_mult": _NUM,
                 "bypass_duplicate": _BOOL, "num_layers": _INT, "decay_rate": _NUM, "decay_type": _STR}
RANDOMNESS = {"seed": _OPT_INT, "deterministic": _BOOL, "diff_rank_seed": _BOOL}
ENV_CFG = {"cudnn_benchmark": _BOOL, "mp_cfg": (dict,), "dist_cfg": (dict,), "resource_limit": _INT}
MP_CFG = {"mp_start_method": _OPT_STR, "opencv_num_threads": _INT}
# Norm layers of a norm_cfg type; "requires_grad" is mmcv's own key.
NORM_LAYERS = {"BN": nn.BatchNorm2d, "BN2d": nn.BatchNorm2d, "SyncBN": nn.SyncBatchNorm, "GN": nn.GroupNorm,
               "LN": nn.LayerNorm, "IN": nn.InstanceNorm2d, "IN2d": nn.InstanceNorm2d}
_NORM_SIZE_ARGS = {"num_features", "num_channels", "normalized_shape", "device", "dtype", "process_group"}
# Arguments the code that builds an object passes itself (semseg.engine.optim, schedulers, data.loader).
INJECTED = {"optimizer": {"params"}, "optim_wrapper": {"optimizer"}, "scheduler": {"optimizer"},
            "data_sampler": {"dataset"}, "sampler": {"ignore_index"}}
# Config arguments that hold another object: argument name -> kind (a table of semseg.build) for one
# object or a list of them.
NESTED = {"backbone": "backbone", "neck": "neck", "decode_head": "head", "auxiliary_head": "head",
          "data_preprocessor": "data_preprocessor", "loss_decode": "loss", "loss_se_decode": "loss",
          "sampler": "sampler", "pipeline": "transform", "dataset": "dataset", "datasets": "dataset",
          "optimizer": "optimizer"}
_KIND_NAMES = {"head": "decode head", "data_sampler": "data sampler", "optim_wrapper": "optim wrapper"}


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _unknown(path: str, key: str, what: str, valid: Iterator[str] | set[str] | dict) -> ConfigError:
    """``path.key: <what> has no key 'key'; did you mean 'nearest'?`` (or the valid keys)."""
    valid = sorted(str(v) for v in valid)
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{near[0]}'?" if near else f" (valid: {', '.join(valid) or 'none'})"
    return ConfigError(f"{_join(path, key)}: {what} takes no key '{key}'{hint}")


def _missing_type(path: str, cfg: Mapping, what: str, types_: Mapping) -> ConfigError:
    """No 'type' key: name a key that looks like a misspelt 'type', else say which types there are."""
    for key in cfg:
        if difflib.get_close_matches(str(key), ["type"], n=1, cutoff=0.6):
            return ConfigError(f"{_join(path, key)}: {what} takes no key '{key}'; did you mean 'type'?")
    return _fail(path, f"{what} needs 'type' (one of {', '.join(sorted(types_))})")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"


def _type_names(types_: tuple[type, ...]) -> str:
    names = ["None" if t is type(None) else t.__name__ for t in types_]
    return " or ".join(dict.fromkeys(names))


def _check_value(path: str, value: Any, expected: tuple[type, ...] | None) -> None:
    """A field's value against a tuple of accepted types (an int is also a float; a bool is no int)."""
    if expected is None:
        return
    if isinstance(value, bool) and bool not in expected:
        raise _fail(path, f"expected {_type_names(expected)}, got {_describe(value)}")
    if isinstance(value, int) and float in expected:
        return
    if not isinstance(value, expected):
        raise _fail(path, f"expected {_type_names(expected)}, got {_describe(value)}")


def _check_fields(path: str, cfg: Any, fields: Mapping[str, tuple | None], what: str,
                  allow_type: bool = False) -> None:
    """A plain settings dict: every key one of ``fields``, every value of its type."""
    if not isinstance(cfg, Mapping):
        raise _fail(path, f"expected a dict ({what}), got {_describe(cfg)}")
    for key, value in cfg.items():
        if key == "type" and allow_type:
            continue
        if key not in fields:
            raise _unknown(path, key, what, fields)
        _check_value(_join(path, key), value, fields[key])


# ------------------------------------------------------------------------------------------ type hints
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of the ``__init__`` arguments of ``cls`` and of the parents it forwards to."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        try:
            hints.update(typing.get_type_hints(init))
        except Exception:  # a hint that does not resolve at run time: that class's arguments go unchecked
            continue
    hints.pop("return", None)
    return hints


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value can be what ``hint`` describes. Lenient where configs are: an int is a
    float, a list is a tuple (and the reverse), a string names a dtype or a device; hints it cannot
    judge (classes other than builtins, callables, type variables) accept anything."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (os.PathLike,) or origin is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    container = origin or hint
    if container in (list, tuple, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection):
        if not isinstance(value, (list, tuple)):
            return False
        if not args or args == ((),):
            return True
        if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value)
    if container in (dict, abc.Mapping, abc.MutableMapping):
        return isinstance(value, Mapping)
    return True


# ------------------------------------------------------------------------------------------ objects
def _check_object(kind: str, cfg: Any, path: str) -> None:
    """A ``dict(type=..., **arguments)`` for a class of the ``kind`` table (a list of them for lists)."""
    if isinstance(cfg, (list, tuple)) and kind in ("head", "loss", "transform", "dataset", "scheduler"):
        for index, item in enumerate(cfg):
            _check_object(kind, item, _join(path, index))
        return
    what = _KIND_NAMES.get(kind, kind)
    if not isinstance(cfg, (Mapping, *_PLAIN)):
        return  # an object built already (a dataset, a transform callable), put in by code
    if not isinstance(cfg, Mapping):
        raise _fail(path, f"expected a {what} config (a dict with 'type'), got {_describe(cfg)}")
    if "type" not in cfg:
        raise _missing_type(path, cfg, f"a {what} config", TABLES[kind])
    type_name = cfg["type"]
    if not isinstance(type_name, str):
        raise _fail(_join(path, "type"), f"expected a {what} type name (str), got {_describe(type_name)}")
    try:
        cls = lookup(kind, type_name)
    except KeyError as err:
        raise _fail(_join(path, "type"), err.args[0]) from None
    valid = accepted_arguments(cls)
    parameters = inspect.signature(cls).parameters
    if kind == "transform" and "resize_type" in parameters:
        # RandomResize / RandomChoiceResize pass their other keywords on to the resize they build
        inner = cfg.get("resize_type", "Resize")
        inner_valid = accepted_arguments(lookup("transform", inner)) \
            if isinstance(inner, str) and inner in TABLES["transform"] else None
        own = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        valid = None if inner_valid is None else own | (inner_valid - {"scale"})
    hints = _hints(cls)
    for key, value in cfg.items():
        if key == "type":
            continue
        where = _join(path, key)
        if valid is not None and key not in valid:
            raise _unknown(path, key, type_name, valid | {"type"})
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise _fail(where, f"expected {_hint_name(hint)}, got {_describe(value)}")
        _check_nested(kind, key, value, where)
    missing = [name for name in _required(cls) if name not in cfg and name not in INJECTED.get(kind, ())]
    if missing:
        raise _fail(path, f"{type_name} needs {', '.join(repr(m) for m in missing)}")


@functools.cache
def _required(cls: type) -> tuple[str, ...]:
    """Arguments without a default of ``cls.__init__`` and of the parents it forwards ``**kwargs`` to
    (those a class passes to its parent itself are arguments of its own, so they are not counted twice)."""
    required: list[str] = []
    own: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(klass.__init__).parameters
        for name, param in params.items():
            if name == "self" or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if param.default is inspect.Parameter.empty and name not in own and name not in required:
                required.append(name)
            own.add(name)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    return tuple(required)


def _hint_name(hint: Any) -> str:
    text = str(hint) if typing.get_origin(hint) or isinstance(hint, types.UnionType) else hint.__name__
    return text.replace("typing.", "").replace("collections.abc.", "")


def _check_nested(kind: str, key: str, value: Any, path: str) -> None:
    """The objects and settings inside one argument of a ``kind`` object."""
    if value is None:
        return
    if kind == "segmentor" and key in ("test_cfg", "train_cfg"):
        fields = MODEL_TEST_CFG if key == "test_cfg" else MODEL_TRAIN_CFG
        _check_fields(path, value, fields, f"model.{key}")
        if key == "test_cfg":
            _check_inference(path, value)
        return
    if key.endswith(PROBABILITY_SUFFIXES) and isinstance(value, (int, float)) and value > 1:
        raise _fail(path, f"expected a probability (at most 1; dropout_ratio <= 0 turns dropout off), got {value}")
    if (key.endswith("channels") or key == "num_classes") and isinstance(value, int) and value < 1:
        raise _fail(path, f"expected a positive int, got {value}")
    if kind == "backbone" and key == "extra" and isinstance(value, Mapping):
        for stage, fields in value.items():
            if stage not in HRNET_STAGES:
                raise _unknown(path, stage, "HRNet's extra", HRNET_STAGES)
            _check_fields(_join(path, stage), fields, HRNET_STAGE, "an HRNet stage")
            for field in ("num_blocks", "num_channels"):
                for index, item in enumerate(fields.get(field) or ()):
                    _check_value(_join(path, f"{stage}.{field}.{index}"), item, _INT)
    if key == "norm_cfg" or key.endswith("_norm_cfg"):
        _check_norm(path, value)
    elif key == "act_cfg" and isinstance(value, Mapping):
        _check_act(path, value)
    elif key == "transforms" and kind == "transform":  # TestTimeAug: a list of lists of transforms
        for index, group in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            _check_object("transform", group, _join(path, index))
    elif key in NESTED:
        nested_kind = NESTED[key]
        if isinstance(value, Mapping) or nested_kind in ("head", "loss", "transform", "dataset"):
            _check_object(nested_kind, value, path)


def _check_norm(path: str, cfg: Any) -> None:
    if not isinstance(cfg, Mapping):
        raise _fail(path, f"expected a norm config such as dict(type='BN'), got {_describe(cfg)}")
    if "type" not in cfg:
        raise _missing_type(path, cfg, "a norm_cfg", NORM_LAYERS)
    norm_type = cfg.get("type")
    if not isinstance(norm_type, str) or norm_type not in NORM_LAYERS:
        raise _unknown(path, norm_type, "norm_cfg type", NORM_LAYERS) if isinstance(norm_type, str) else \
            _fail(_join(path, "type"), f"expected a norm type ({', '.join(NORM_LAYERS)}), got {_describe(norm_type)}")
    valid = {"type", "requires_grad"} | set(inspect.signature(NORM_LAYERS[norm_type]).parameters) - _NORM_SIZE_ARGS
    for key in cfg:
        if key not in valid:
            raise _unknown(path, key, f"norm_cfg of type {norm_type!r}", valid)
    _check_value(_join(path, "requires_grad"), cfg.get("requires_grad", True), _BOOL)


def _check_act(path: str, cfg: Mapping) -> None:
    from semseg.nn.activation import build_activation

    try:
        build_activation(dict(cfg))
    except (KeyError, TypeError, ValueError) as err:
        raise _fail(path, err.args[0] if err.args else str(err)) from None


def _pair(value: Any) -> tuple[int, int] | None:
    """An int or an (h, w) pair of ints as a pair; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value[0], value[1]
    return None


def _check_inference(path: str, test_cfg: Mapping) -> None:
    """model.test_cfg: a known mode; slide needs crop_size and stride, positive, with stride <= crop."""
    mode = test_cfg.get("mode", "whole")
    if mode not in ("whole", "slide"):
        raise _fail(_join(path, "mode"), f"expected 'whole' or 'slide', got {_describe(mode)}")
    for key in ("crop_size", "stride"):
        if key in test_cfg and (_pair(test_cfg[key]) is None or min(_pair(test_cfg[key])) < 1):
            raise _fail(_join(path, key), f"expected a positive int or (h, w), got {_describe(test_cfg[key])}")
    if mode == "slide":
        missing = [k for k in ("crop_size", "stride") if k not in test_cfg]
        if missing:
            raise _fail(path, f"mode='slide' needs {' and '.join(missing)}")
        crop, stride = _pair(test_cfg["crop_size"]), _pair(test_cfg["stride"])
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise _fail(_join(path, "stride"), f"{tuple(stride)} is larger than crop_size {tuple(crop)}: windows "
                                               "would leave pixels unpredicted")
    for key in ("batch_size", "max_whole_pixels"):
        value = test_cfg.get(key)
        if isinstance(value, int) and value < 1:
            raise _fail(_join(path, key), f"expected a positive int, got {value}")


# ------------------------------------------------------------------------------------------ sections
def _check_dataloader(path: str, cfg: Any) -> None:
    _check_fields(path, cfg, DATALOADER, "a dataloader")
    for key in ("batch_size", "num_workers"):
        if isinstance(cfg.get(key), int) and cfg[key] < (1 if key == "batch_size" else 0):
            raise _fail(_join(path, key), f"expected {'a positive' if key == 'batch_size' else 'a non-negative'} "
                                          f"int, got {cfg[key]}")
    if cfg.get("sampler") is not None:
        _check_object("data_sampler", cfg["sampler"], _join(path, "sampler"))
    if "dataset" not in cfg:
        raise _fail(path, "a dataloader needs 'dataset'")
    _check_object("dataset", cfg["dataset"], _join(path, "dataset"))


def _check_loop(key: str, cfg: Any) -> None:
    if not isinstance(cfg, Mapping):
        raise _fail(key, f"expected a dict, got {_describe(cfg)}")
    loop = cfg.get("type", LOOP_DEFAULTS[key])
    if not isinstance(loop, str) or loop not in LOOPS:
        raise _unknown(key, loop, "the loop type", LOOPS) if isinstance(loop, str) else \
            _fail(_join(key, "type"), f"expected a loop type name, got {_describe(loop)}")
    hint = " (the inference settings are model.test_cfg)" if key == "test_cfg" else ""
    for field, value in cfg.items():
        if field == "type":
            continue
        if field not in LOOPS[loop]:
            err = _unknown(key, field, loop, LOOPS[loop])
            raise ConfigError(f"{err}{hint}") from None
        _check_value(_join(key, field), value, LOOPS[loop][field])
        if isinstance(value, int) and not isinstance(value, bool) and value < 1 and field != "val_begin":
            raise _fail(_join(key, field), f"expected a positive int, got {value}")


def _check_hooks(cfg: Any) -> None:
    if not isinstance(cfg, Mapping):
        raise _fail("default_hooks", f"expected a dict of hooks, got {_describe(cfg)}")
    for name, hook in cfg.items():
        path = _join("default_hooks", name)
        if name not in DEFAULT_HOOK_NAMES:
            raise _unknown("default_hooks", name, "default_hooks (a hook of another name goes in custom_hooks)",
                           DEFAULT_HOOK_NAMES)
        if hook is None:
            continue
        if not isinstance(hook, Mapping) or "type" not in hook:
            raise _fail(path, f"expected a hook config dict(type=...), got {_describe(hook)}")
        hook_type = hook["type"]
        if not isinstance(hook_type, str) or hook_type not in HOOKS:
            continue  # a hook semseg does not run; its fields are not semseg's to judge
        _check_fields(path, hook, HOOKS[hook_type], hook_type, allow_type=True)


def _check_evaluator(path: str, cfg: Any) -> None:
    from semseg.evaluation import IoUMetric

    if not isinstance(cfg, Mapping):
        raise _fail(path, f"expected dict(type='IoUMetric', ...), got {_describe(cfg)}")
    if not isinstance(cfg.get("type", "IoUMetric"), str) or cfg.get("type", "IoUMetric") != "IoUMetric":
        raise _unknown(path, cfg["type"], "the evaluator type", {"IoUMetric"}) if isinstance(cfg["type"], str) else \
            _fail(_join(path, "type"), f"expected 'IoUMetric', got {_describe(cfg['type'])}")
    valid = (accepted_arguments(IoUMetric) or set()) - {"class_names"}
    hints = _hints(IoUMetric)
    for key, value in cfg.items():
        if key == "type":
            continue
        if key not in valid:
            raise _unknown(path, key, "IoUMetric", valid)
        if key in hints and not _matches(value, hints[key]):
            raise _fail(_join(path, key), f"expected {_hint_name(hints[key])}, got {_describe(value)}")


def _check_optim_wrapper(cfg: Any) -> None:
    path = "optim_wrapper"
    if not isinstance(cfg, Mapping):
        raise _fail(path, f"expected a dict, got {_describe(cfg)}")
    rest = {k: v for k, v in cfg.items() if k not in ("optimizer", "paramwise_cfg", "constructor")}
    _check_object("optim_wrapper", {"type": "OptimWrapper", **rest}, path)
    if "optimizer" not in cfg:
        raise _fail(path, "needs 'optimizer', e.g. dict(type='SGD', lr=0.01)")
    _check_object("optimizer", cfg["optimizer"], _join(path, "optimizer"))
    if cfg.get("paramwise_cfg") is not None:
        _check_fields(_join(path, "paramwise_cfg"), cfg["paramwise_cfg"], PARAMWISE_CFG, "paramwise_cfg")
    _check_value(_join(path, "constructor"), cfg.get("constructor", ""), _STR)


def _check_schedulers(cfg: Any) -> None:
    items = cfg if isinstance(cfg, (list, tuple)) else [cfg]
    for index, item in enumerate(items):
        path = _join("param_scheduler", index) if isinstance(cfg, (list, tuple)) else "param_scheduler"
        if isinstance(item, Mapping):
            item = {k: v for k, v in item.items() if k != "convert_to_iter_based"}
        _check_object("scheduler", item, path)


def _check_env(cfg: Any) -> None:
    _check_fields("env_cfg", cfg, ENV_CFG, "env_cfg")
    if cfg.get("mp_cfg") is not None:
        _check_fields("env_cfg.mp_cfg", cfg["mp_cfg"], MP_CFG, "env_cfg.mp_cfg")


# ------------------------------------------------------------------------------------------ agreement
def _heads(model: Mapping) -> Iterator[tuple[str, Mapping]]:
    """(path, config) of every decode and auxiliary head."""
    for name in ("decode_head", "auxiliary_head"):
        value = model.get(name)
        if isinstance(value, Mapping):
            yield f"model.{name}", value
        elif isinstance(value, (list, tuple)):
            for index, head in enumerate(value):
                if isinstance(head, Mapping):
                    yield f"model.{name}.{index}", head


def _dataset_classes(cfg: Any, path: str) -> tuple[int, str] | None:
    """(number of classes, where it comes from) of a dataset config, when it can be told without reading it."""
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("type"), str):
        return None
    if cfg["type"] == "RepeatDataset":
        return _dataset_classes(cfg.get("dataset"), _join(path, "dataset"))
    if cfg["type"] == "ConcatDataset":
        datasets = cfg.get("datasets") or []
        return _dataset_classes(datasets[0], _join(path, "datasets.0")) if datasets else None
    classes = (cfg.get("metainfo") or {}).get("classes") if isinstance(cfg.get("metainfo"), Mapping) else None
    if isinstance(classes, (list, tuple)):
        return len(classes), _join(path, "metainfo.classes")
    from semseg.data.datasets.base import BaseSegDataset

    cls = lookup("dataset", cfg["type"])
    if issubclass(cls, BaseSegDataset):  # files on disk: the class's own names
        default = getattr(cls, "METAINFO", {}).get("classes")
        return (len(default), f"{path} ({cfg['type']})") if default else None
    try:  # an in-memory dataset (synthetic) takes its classes from its arguments: build it, without pipeline
        dataset = build("dataset", {k: v for k, v in cfg.items() if k != "pipeline"})
        return len(dataset.metainfo["classes"]), path
    except Exception:
        return None


def _check_num_classes(cfg: Mapping) -> None:
    model = cfg.get("model")
    if not isinstance(model, Mapping):
        return
    heads = [(path, head["num_classes"]) for path, head in _heads(model) if isinstance(head.get("num_classes"), int)]
    for path, count in heads[1:]:
        if count != heads[0][1]:
            raise _fail(_join(path, "num_classes"), f"{count} disagrees with {heads[0][0]}.num_classes={heads[0][1]}")
    if not heads:
        return
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        section = cfg.get(loader)
        if not isinstance(section, Mapping):
            continue
        found = _dataset_classes(section.get("dataset"), f"{loader}.dataset")
        if found is not None and found[0] != heads[0][1]:
            raise _fail(_join(heads[0][0], "num_classes"),
                        f"{heads[0][1]} disagrees with the {found[0]} classes of {found[1]}")


def _resized_sides(transform: Mapping) -> tuple[float, float, bool] | None:
    """(longest, shortest) side bound of what a resize transform makes, and whether it keeps the ratio."""
    keep = bool(transform.get("keep_ratio", False))
    if transform["type"] == "Resize" and _pair(transform.get("scale")) is not None:
        w, h = _pair(transform["scale"])
        return (max(w, h), min(w, h), keep) if keep else (w, h, keep)
    if transform["type"] == "RandomResize":
        scale, ratio = transform.get("scale"), transform.get("ratio_range")
        if _pair(scale) is not None and isinstance(ratio, (list, tuple)) and len(ratio) == 2 and all(
                isinstance(r, (int, float)) for r in ratio):
            w, h = _pair(scale)
            top = max(ratio)
            return (max(w, h) * top, min(w, h) * top, keep) if keep else (w * top, h * top, keep)
    return None


def _check_crop(cfg: Mapping) -> None:
    """A RandomCrop larger than every image the train pipeline's resize makes crops nothing."""
    section = cfg.get("train_dataloader")
    dataset = section.get("dataset") if isinstance(section, Mapping) else None
    while isinstance(dataset, Mapping) and dataset.get("type") in ("RepeatDataset", "ConcatDataset"):
        dataset = dataset.get("dataset") or (dataset.get("datasets") or [None])[0]
    pipeline = dataset.get("pipeline") if isinstance(dataset, Mapping) else None
    if not isinstance(pipeline, (list, tuple)):
        return
    bound, source = None, None
    for index, transform in enumerate(pipeline):
        if not isinstance(transform, Mapping):
            continue
        sides = _resized_sides(transform) if transform.get("type") in ("Resize", "RandomResize") else None
        if sides is not None:
            bound, source = sides, index
        if transform.get("type") == "RandomCrop" and bound is not None and _pair(transform.get("crop_size")):
            crop_h, crop_w = _pair(transform["crop_size"])
            first, second, keep = bound
            # keep_ratio: sides at most (first, second) in either orientation; else exactly (w, h)
            too_big = (max(crop_h, crop_w) > first or min(crop_h, crop_w) > second) if keep else \
                (crop_w > first or crop_h > second)
            if too_big:
                where = f"train_dataloader.dataset.pipeline.{index}.crop_size"
                made = f"sides at most {first:g} x {second:g}" if keep else f"{first:g} x {second:g} (w x h)"
                raise _fail(where, f"{(crop_h, crop_w)} (h, w) is larger than the images pipeline.{source} makes "
                                   f"({made}): the crop would crop nothing")


def _sync_bn_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, Mapping):
        if value.get("type") == "SyncBN" and "norm" in path.rsplit(".", 1)[-1]:
            yield path
        for key, item in value.items():
            yield from _sync_bn_paths(item, _join(path, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _sync_bn_paths(item, _join(path, index))


# ------------------------------------------------------------------------------------------ top level
def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted(((str(k), _freeze(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _subtrees(value: Any, found: set) -> Any:
    """Add the frozen form of ``value`` and of everything inside it to ``found``; returns it frozen."""
    if isinstance(value, Mapping):
        frozen = tuple(sorted(((str(k), _subtrees(v, found)) for k, v in value.items()), key=lambda kv: kv[0]))
    elif isinstance(value, (list, tuple)):
        frozen = tuple(_subtrees(v, found) for v in value)
    else:
        frozen = _freeze(value)
    found.add(frozen)
    return frozen


def _check_top_level(cfg: Mapping, overrides: list[str]) -> None:
    """Warn about top-level keys nothing reads: not semseg's, not the runner's, not a helper variable (a
    conventional name, or, unless the name looks like a misspelt known key, a value that appears in a
    section, such as a user's ``my_crop``)."""
    known = SEMSEG_KEYS | RUNNER_KEYS
    used: set = set()
    for key in known & set(cfg):
        _subtrees(cfg[key], used)
    for key, value in cfg.items():
        if key in known or key in HELPER_VARIABLES:
            continue
        near = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
        if not near and _freeze(value) in used and not isinstance(value, bool) and value is not None:
            continue
        hint = f"; did you mean '{near[0]}'?" if near else ""
        warnings.warn(f"config key '{key}' is not read by semseg (nor by MMSegmentation's runner){hint}",
                      ConfigWarning, stacklevel=3)
    for option in overrides:
        top = option.split(".")[0]
        if top not in known and "." not in option:
            warnings.warn(f"cfg-option '{option}' sets a variable of the config file: what the file computed from "
                          f"it (e.g. model.decode_head.{top}) keeps the old value; set those keys instead",
                          ConfigWarning, stacklevel=3)


def check_config(cfg: Config | Mapping, *, training: bool = False, world_size: int | None = None,
                 amp: bool = False) -> list[str]:
    """Check a loaded config before any work; raise :class:`~semseg.config.ConfigError` on the first fault.

    ``training``: also require what training reads (``train_cfg.max_iters``, ``train_dataloader``,
    ``optim_wrapper``; ``amp``: the trainer's ``--amp`` makes it an AmpOptimWrapper) and the same ``num_classes`` in every head and dataset. ``world_size``: processes that will train (default: torchrun's ``WORLD_SIZE``, else 1).
    Returns notes for the run's log (each is also logged here): SyncBN on one process becomes BatchNorm.
    Unknown top-level keys are :class:`ConfigWarning` warnings.
    """
    overrides = cfg.overrides if isinstance(cfg, Config) else []
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    _check_top_level(data, overrides)
    if "model" in data:
        _check_object("segmentor", data["model"], "model")
    elif training:
        raise ConfigError("the config has no 'model'")
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if data.get(key) is not None:
            _check_dataloader(key, data[key])
    for key in LOOP_DEFAULTS:
        if data.get(key) is not None:
            _check_loop(key, data[key])
    if data.get("default_hooks") is not None:
        _check_hooks(data["default_hooks"])
    for key in ("val_evaluator", "test_evaluator"):
        if data.get(key) is not None:
            _check_evaluator(key, data[key])
    if data.get("optim_wrapper") is not None:
        wrapper = data["optim_wrapper"]
        _check_optim_wrapper({**wrapper, "type": "AmpOptimWrapper"} if amp and isinstance(wrapper, Mapping) else wrapper)
    if data.get("param_scheduler") is not None:
        _check_schedulers(data["param_scheduler"])
    if data.get("randomness") is not None:
        _check_fields("randomness", data["randomness"], RANDOMNESS, "randomness")
    if data.get("env_cfg") is not None:
        _check_env(data["env_cfg"])
    if training:
        for key in ("train_dataloader", "optim_wrapper", "train_cfg"):
            if data.get(key) is None:
                raise ConfigError(f"training needs '{key}' in the config")
        if "max_iters" not in data["train_cfg"]:
            raise _fail("train_cfg", "training needs max_iters")
    if training:  # inference (init_model) often loads other weights into a config: heads and data may differ
        _check_num_classes(data)
    _check_crop(data)
    notes = []
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    sync = list(_sync_bn_paths(data.get("model"), "model"))
    if training and sync and world_size <= 1:
        more = f" and {len(sync) - 1} more" if len(sync) > 1 else ""
        notes.append(f"SyncBN ({sync[0]}{more}) on one process: using BatchNorm2d instead (same parameters and "
                     "statistics; nothing to synchronize)")
    for note in notes:
        log.info(note)
    return notes
