"""Test-only harness around MMSegmentation 1.2.2, the oracle semseg is compared with.

mmcv-lite ships mmcv's Python files without the compiled module ``mmcv._ext``, which ``import mmseg.models``
needs. ``install_ext_stub`` puts a stand-in there: every op raises ``NotImplementedError`` naming itself,
except PSANet's PSAMask, written here in plain torch from the operator's definition.

The helpers build an oracle model from a config dict with random weights and random norm statistics, save
its state dict in MMSegmentation's checkpoint layout, and run ``encode_decode`` / ``inference`` / ``loss``
with the metadata MMSegmentation expects, so that tests only pass tensors in and get tensors out. For a single
head, block or backbone: ``build_oracle_module``, ``head_pair`` (the oracle head and ours holding its weights)
and ``oracle_head_loss``.

mmseg is imported lazily: importing this module never fails where the oracle is not installed.
"""

from __future__ import annotations

import copy
import functools
import importlib.machinery
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semseg.build import build

EXT_NAME = "mmcv._ext"


# ---------------------------------------------------------------------------------------------------------
# PSAMask, from its definition (PSANet, Zhao et al. ECCV 2018, sec. 3.3).
#
# The input holds, at each position (h, w) of an H x W map, a mask of hm x wm values (channel c = i * wm + j)
# centred on (h, w): mask cell (i, j) refers to the map position (h + i - hm // 2, w + j - wm // 2). Cells
# falling outside the map are dropped. The output is (N, H*W, H, W):
#   collect:    out[n, p * W + q, h, w] = in[n, i * wm + j, h, w]
#   distribute: out[n, h * W + w, p, q] = in[n, i * wm + j, h, w]
# with (p, q) = (h + i - half_h, w + j - half_w) and half = (mask - 1) // 2. Both are pure index moves,
# so the backward pass moves the gradient back along the same index pairs.
# ---------------------------------------------------------------------------------------------------------


def _psamask_windows(h_feature: int, w_feature: int, h_mask: int, w_mask: int, half_h: int, half_w: int):
    """Yield, per map position (h, w), the mask rows/cols kept and the map rows/cols they land on."""
    for h in range(h_feature):
        i0, i1 = max(0, half_h - h), min(h_mask, h_feature + half_h - h)
        for w in range(w_feature):
            j0, j1 = max(0, half_w - w), min(w_mask, w_feature + half_w - w)
            yield h, w, slice(i0, i1), slice(j0, j1), slice(i0 + h - half_h, i1 + h - half_h), \
                slice(j0 + w - half_w, j1 + w - half_w)


def psamask_forward(input: torch.Tensor, output: torch.Tensor, psa_type: int, num_: int, h_feature: int,
                    w_feature: int, h_mask: int, w_mask: int, half_h_mask: int, half_w_mask: int) -> None:
    """Fill ``output`` (N, H*W, H, W) from ``input`` (N, h_mask*w_mask, H, W); psa_type 0 collect, 1 distribute.

    Same keyword signature as mmcv's compiled ``psamask_forward`` (``mmcv/ops/psa_mask.py`` calls it so).
    """
    src = input.reshape(num_, h_mask, w_mask, h_feature, w_feature)
    dst = output.view(num_, h_feature, w_feature, h_feature, w_feature)
    for h, w, mi, mj, pi, pj in _psamask_windows(h_feature, w_feature, h_mask, w_mask, half_h_mask,
                                                 half_w_mask):
        if psa_type == 0:
            dst[:, pi, pj, h, w] = src[:, mi, mj, h, w]
        else:
            dst[:, h, w, pi, pj] = src[:, mi, mj, h, w]


def psamask_backward(grad_output: torch.Tensor, grad_input: torch.Tensor, psa_type: int, num_: int,
                     h_feature: int, w_feature: int, h_mask: int, w_mask: int, half_h_mask: int,
                     half_w_mask: int) -> None:
    """Fill ``grad_input`` (N, h_mask*w_mask, H, W) from ``grad_output`` (N, H*W, H, W): forward's inverse move."""
    src = grad_output.reshape(num_, h_feature, w_feature, h_feature, w_feature)
    dst = grad_input.view(num_, h_mask, w_mask, h_feature, w_feature)
    for h, w, mi, mj, pi, pj in _psamask_windows(h_feature, w_feature, h_mask, w_mask, half_h_mask,
                                                 half_w_mask):
        if psa_type == 0:
            dst[:, mi, mj, h, w] = src[:, pi, pj, h, w]
        else:
            dst[:, mi, mj, h, w] = src[:, h, w, pi, pj]


def _missing_op(name: str) -> Callable[..., Any]:
    def op(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"mmcv op '{name}' needs the compiled mmcv._ext, which this stand-in lacks")

    op.__name__ = name
    return op


def _ext_getattr(name: str) -> Callable[..., Any]:
    # mmcv's ext_loader.load_ext checks each op it lists with hasattr; any op name resolves to a raiser.
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing_op(name)


def install_ext_stub() -> types.ModuleType:
    """Put the ``mmcv._ext`` stand-in into ``sys.modules`` (idempotent); call before importing mmseg."""
    existing = sys.modules.get(EXT_NAME)
    if existing is not None:
        return existing
    ext = types.ModuleType(EXT_NAME, "Stand-in for mmcv's compiled ops (semseg conformance tests).")
    # A spec with no loader: mmcv/mmengine's `find_loader('mmcv._ext')` checks then report no compiled ops.
    ext.__spec__ = importlib.machinery.ModuleSpec(EXT_NAME, None)
    ext.psamask_forward = psamask_forward
    ext.psamask_backward = psamask_backward
    ext.__getattr__ = _ext_getattr
    sys.modules[EXT_NAME] = ext
    return ext


@functools.lru_cache(maxsize=1)
def oracle_problem() -> str | None:
    """Why the oracle cannot be used (the import error), or None when MMSegmentation, mmcv and mmengine
    import with the stub in place."""
    install_ext_stub()
    try:
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS  # noqa: F401
    except Exception as err:  # a broken install (wrong versions, missing module) is reported, not hidden
        return f"{type(err).__name__}: {err}"
    return None


def oracle_available() -> bool:
    """True when MMSegmentation (with mmcv and mmengine) imports, with the stub in place."""
    return oracle_problem() is None


def require_oracle() -> None:
    """Skip the calling test when the oracle is not installed."""
    if not oracle_available():
        import pytest

        pytest.skip("MMSegmentation 1.2.2 (the oracle) is not installed")


def mmseg_config_dir() -> Path:
    """The oracle's own config tree (``<mmseg>/.mim/configs``)."""
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs"


def load_oracle_config(name: str, method: str | None = None) -> Any:
    """Load the oracle's config file for a zoo name as an mmengine ``Config`` (``_base_`` resolved)."""
    from mmengine.config import Config

    root = mmseg_config_dir()
    path = root / method / f"{name}.py" if method else next(root.glob(f"*/{name}.py"), None)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no oracle config named {name!r} under {root}")
    return Config.fromfile(str(path))


# ---------------------------------------------------------------------------------------------------------
# Config surgery: no pretrained weights, no SyncBN.
# ---------------------------------------------------------------------------------------------------------


def replace_syncbn(cfg: Any) -> Any:
    """Return a copy of a nested config with every ``type='SyncBN'`` turned into ``'BN'`` (no process group)."""
    if isinstance(cfg, dict):
        out = {k: replace_syncbn(v) for k, v in cfg.items()}
        if out.get("type") == "SyncBN":
            out["type"] = "BN"
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(replace_syncbn(v) for v in cfg)
    return cfg


def _is_pretrained_init(init_cfg: Any) -> bool:
    return isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained"


def strip_pretrained(cfg: Any) -> Any:
    """Return a copy of a nested config with ``pretrained`` set to None and ``Pretrained`` init_cfgs removed."""
    if isinstance(cfg, dict):
        out = {}
        for k, v in cfg.items():
            if k == "pretrained" or (k == "init_cfg" and _is_pretrained_init(v)):
                out[k] = None
            elif k == "init_cfg" and isinstance(v, (list, tuple)):
                out[k] = [strip_pretrained(c) for c in v if not _is_pretrained_init(c)] or None
            else:
                out[k] = strip_pretrained(v)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(strip_pretrained(v) for v in cfg)
    return cfg


def prepare_model_cfg(cfg: Any) -> dict:
    """The model dict of ``cfg`` (a model dict, or a whole config with a ``model`` key), ready to build."""
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else copy.deepcopy(dict(cfg))
    if "type" not in cfg and "model" in cfg:
        cfg = dict(cfg["model"])
    return strip_pretrained(replace_syncbn(cfg))


def build_oracle_model(cfg: Any, seed: int = 0, init_weights: bool = True) -> nn.Module:
    """Build an MMSegmentation model (eval mode, CPU) from a config dict, never loading pretrained weights.

    Args:
        cfg: model dict (``type='EncoderDecoder'``, ...) or a whole config holding ``model``.
        seed: seeds the random initialisation (the global RNG is restored afterwards).
        init_weights: call ``init_weights()`` so the weights are those of a fresh model.
    """
    install_ext_stub()
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    model_cfg = ConfigDict(prepare_model_cfg(cfg))  # mmseg reads test_cfg.mode etc. as attributes
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs one INFO record per parameter
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MODELS.build(model_cfg)
            if init_weights:
                model.init_weights()
    finally:
        logger.setLevel(level)
    return model.eval()


def randomize_(model: nn.Module, seed: int = 0, conv_std: float | None = None) -> nn.Module:
    """Give every norm layer random statistics and affine parameters, in place; returns ``model``.

    running_mean ~ N(0, 1), running_var and weight ~ U(0.5, 1.5), bias ~ 0.1 * N(0, 1): the defaults
    (0, 1, 1, 0) would hide a missing or misplaced norm. With ``conv_std``, conv weights are redrawn from
    N(0, conv_std) too; otherwise they stay as initialised. Weights initialised to all zeros so that a
    block starts as the identity (DANet's ``gamma``, a non-local block's last conv) get U(0.5, 1.5) for a
    scalar and 0.1 * N(0, 1) otherwise: at zero the block's attention would go untested.
    """
    gen = torch.Generator().manual_seed(seed)

    def fill_(t: torch.Tensor, low: float | None = None, high: float | None = None, std: float = 1.0) -> None:
        if low is None:
            t.copy_(torch.randn(t.shape, generator=gen) * std)
        else:
            t.copy_(torch.rand(t.shape, generator=gen) * (high - low) + low)

    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norm_types):
                if getattr(m, "running_mean", None) is not None:
                    fill_(m.running_mean)
                    fill_(m.running_var, 0.5, 1.5)
                if getattr(m, "weight", None) is not None:
                    fill_(m.weight, 0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    fill_(m.bias, std=0.1)
            elif conv_std is not None and isinstance(m, nn.modules.conv._ConvNd):
                fill_(m.weight, std=conv_std)
        for name, param in model.named_parameters():
            if not name.endswith("bias") and not param.any():
                if param.dim() == 0:
                    fill_(param, 0.5, 1.5)
                else:
                    fill_(param, std=0.1)
    return model


def build_oracle_module(cfg: dict) -> nn.Module:
    """Build one oracle module (a head, block or backbone) from its config dict, in mmseg's default scope.

    ``cfg`` is not modified; the module is in train mode with the weights of its constructor (global RNG).
    """
    install_ext_stub()
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    return MODELS.build(copy.deepcopy(cfg))


def head_pair(cfg: dict, seed: int = 0, zero_std: float | None = None, redraw_convs: str | None = None,
              conv_std: float = 0.3) -> tuple[nn.Module, nn.Module]:
    """The oracle decode head built from ``cfg`` and ``randomize_``d, and semseg's head from the same config
    holding the oracle's state dict (key sets asserted equal, loaded strictly).

    Args:
        cfg: head config dict (``type='PSPHead'``, ...); not modified.
        seed: seeds the oracle's construction (``seed``), ``randomize_`` (``seed + 1``) and the draws below
            (``seed + 2``).
        zero_std: draw the parameters ``randomize_`` leaves at zero (the biases of zero-initialised convs,
            such as ANN's ``out_project``) from N(0, zero_std), so that a misplaced bias shows.
        redraw_convs: attribute name of a block in the head (``'nl_block'``) whose conv weights are redrawn
            from N(0, conv_std): a non-local block's convs start at std 0.01 and barely show in the logits.

    Returns:
        (oracle, ours), both in train mode as built.
    """
    torch.manual_seed(seed)
    oracle = randomize_(build_oracle_module(cfg), seed=seed + 1)
    if zero_std is not None:
        gen = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            for p in oracle.parameters():
                if not p.any():
                    p.copy_(torch.randn(p.shape, generator=gen) * zero_std)
    if redraw_convs is not None:
        randomize_(getattr(oracle, redraw_convs), seed=seed + 2, conv_std=conv_std)
    ours = build("head", copy.deepcopy(cfg))
    state = oracle.state_dict()
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)
    return oracle, ours


def save_oracle_state_dict(model: nn.Module, path: str | Path) -> Path:
    """Save ``model``'s state dict in MMSegmentation's checkpoint layout: {'state_dict': ..., 'meta': {}}."""
    path = Path(path)
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Running the oracle: tensors in, tensors out.
# ---------------------------------------------------------------------------------------------------------


def _img_metas(x: torch.Tensor) -> list[dict]:
    hw = tuple(x.shape[2:])
    return [dict(ori_shape=hw, img_shape=hw, pad_shape=hw, padding_size=[0, 0, 0, 0], flip=False)
            for _ in range(x.shape[0])]


def oracle_encode_decode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.encode_decode``: x (N, 3, H, W) normalized -> logits (N, C, H, W), without grad."""
    with torch.no_grad():
        return model.encode_decode(x, _img_metas(x))


def oracle_inference(model: nn.Module, x: torch.Tensor, mode: str | None = None,
                     crop_size: tuple[int, int] | None = None,
                     stride: tuple[int, int] | None = None) -> torch.Tensor:
    """``model.inference`` (whole or slide): x (N, 3, H, W) -> logits (N, C, H, W), without grad.

    ``mode``/``crop_size``/``stride`` override the model's ``test_cfg`` for this call only.
    """
    from mmengine.config import ConfigDict

    saved = model.test_cfg
    test_cfg = ConfigDict(dict(saved or {}))
    if mode is not None:
        test_cfg.mode = mode
    if crop_size is not None:
        test_cfg.crop_size = tuple(crop_size)
    if stride is not None:
        test_cfg.stride = tuple(stride)
    test_cfg.setdefault("mode", "whole")
    model.test_cfg = test_cfg
    try:
        with torch.no_grad():
            return model.inference(x, _img_metas(x))
    finally:
        model.test_cfg = saved


def oracle_slide_inference(model: nn.Module, x: torch.Tensor, crop: tuple[int, int],
                           stride: tuple[int, int]) -> torch.Tensor:
    """Slide inference with ``crop`` (h, w) windows moved by ``stride`` (h, w): (N, 3, H, W) -> (N, C, H, W)."""
    return oracle_inference(model, x, mode="slide", crop_size=crop, stride=stride)


def _data_samples(labels: torch.Tensor, metas: list[dict]) -> list:
    """One ``SegDataSample`` per image: metainfo ``metas[i]``, gt_sem_seg PixelData (1, H, W) from labels (N, H, W)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for label, meta in zip(labels, metas, strict=True):
        sample = SegDataSample(metainfo=meta)
        sample.gt_sem_seg = PixelData(data=label[None].long())
        samples.append(sample)
    return samples


def oracle_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``model.loss``: x (N, 3, H, W), labels long (N, H, W) -> {'decode.loss_ce': ..., 'aux.loss_ce': ...}.

    Runs in the model's current mode (eval by default: set dropout off or use eval for exact comparisons).
    """
    losses = model.loss(x, _data_samples(labels, _img_metas(x)))
    return dict(losses.items())


def oracle_head_loss(head: nn.Module, feats: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """An oracle decode head's ``loss``: feats [(N, C_i, h_i, w_i)], labels long (N, H, W) at image size ->
    {'loss_ce': ..., 'acc_seg': ...} (DAHead: 'pam_cam.loss_ce', ...).

    Runs in the head's current mode: train it (batch statistics) with dropout off to compare with ours.
    """
    hw = tuple(labels.shape[1:])
    metas = [dict(img_shape=hw, ori_shape=hw) for _ in range(labels.shape[0])]
    return dict(head.loss(feats, _data_samples(labels, metas), train_cfg={}))


# ---------------------------------------------------------------------------------------------------------
# Pairs of (oracle, ours) and their comparisons, shared by the backbone and zoo-model conformance tests.
# ---------------------------------------------------------------------------------------------------------


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of two same-shaped tensors."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def backbone_pair(cfg: dict) -> tuple[nn.Module, nn.Module]:
    """(oracle backbone with random weights and norm statistics, ours holding its state dict), eval mode.

    The oracle's backbones return None from ``train``, hence no chaining on its side.
    """
    require_oracle()
    torch.manual_seed(0)
    oracle = randomize_(build_oracle_module(cfg), seed=1)
    oracle.eval()
    ours = build("backbone", dict(cfg)).eval()
    theirs = oracle.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    return oracle, ours


def assert_features_equal(got: list[torch.Tensor], expected: list[torch.Tensor], out_channels: list[int],
                          min_abs: float = 1e-3, tol: float = 1e-4) -> None:
    """Same number of levels as ``out_channels``, each (N, out_channels[k], h, w) and within ``tol``; the
    oracle's levels must exceed ``min_abs`` somewhere (an all-zero output would compare equal)."""
    assert len(got) == len(expected) == len(out_channels)
    for level, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == e.shape, f"level {level}"
        assert g.shape[1] == out_channels[level], f"level {level}"
        assert e.abs().max() > min_abs
        assert max_diff(g, e) < tol, f"level {level}: max diff {max_diff(g, e)}"


def zoo_pair(name_or_path: str | Path, ckpt_dir: str | Path, cfg_options: dict | None = None,
             method: str | None = None) -> tuple[nn.Module, nn.Module]:
    """(oracle model, semseg model) of a zoo config, same random weights and norm statistics.

    ``name_or_path``: a zoo name, or the path of one of semseg's config files (``<method>/<name>.py``; the
    oracle's config of the same name in the same method folder is used). ``cfg_options`` (dotted keys)
    apply to both sides; the oracle's weights reach ours through a checkpoint saved in ``ckpt_dir``, loaded
    strictly, and the key sets must be equal.
    """
    import semseg

    require_oracle()
    path = Path(name_or_path) if str(name_or_path).endswith(".py") else None
    name = path.stem if path else str(name_or_path)
    cfg = load_oracle_config(name, method or (path.parent.name if path else None))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    oracle = randomize_(build_oracle_model(cfg.model, seed=1), seed=2)
    ckpt = save_oracle_state_dict(oracle, Path(ckpt_dir) / f"{name}.pth")
    ours = semseg.init_model(name_or_path, checkpoint=ckpt, cfg_options=cfg_options)
    assert set(ours.state_dict()) == set(oracle.state_dict())
    return oracle, ours


def assert_encode_decode_equal(oracle: nn.Module, ours: nn.Module, size: tuple[int, int] = (57, 83),
                               tol: float = 1e-4) -> None:
    """``encode_decode`` of a (2, 3, *size) batch (seed 0): logits within ``tol``, the oracle's not all ~0."""
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = oracle_encode_decode(oracle, x)
    with torch.no_grad():
        got = ours.encode_decode(x)
    assert expected.abs().max() > 1e-3  # a trivial all-zero output would compare equal
    assert max_diff(got, expected) < tol


def assert_slide_equal(oracle: nn.Module, ours: nn.Module, size: tuple[int, int] = (71, 97),
                       crop: tuple[int, int] = (48, 56), stride: tuple[int, int] = (27, 31),
                       tol: float = 1e-4) -> None:
    """Slide inference of a (2, 3, *size) batch (seed 1) with ``crop`` / ``stride``: logits within ``tol``.
    Our model's ``test_cfg`` is restored afterwards."""
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    expected = oracle_inference(oracle, x, mode="slide", crop_size=crop, stride=stride)
    saved = ours.test_cfg
    ours.test_cfg = {**saved, "mode": "slide", "crop_size": crop, "stride": stride}
    try:
        with torch.no_grad():
            got = ours.inference(x)
    finally:
        ours.test_cfg = saved
    assert max_diff(got, expected) < tol


def set_dropout_off(model: nn.Module) -> None:
    """Zero the rate of every Dropout / Dropout2d, so training-mode outputs are deterministic."""
    for module in model.modules():
        if isinstance(module, nn.Dropout2d | nn.Dropout):
            module.p = 0.0


def assert_loss_equal(oracle: nn.Module, ours: nn.Module, size: tuple[int, int] = (49, 67),
                      ignore_rows: int = 5, tol: float = 1e-4) -> dict[str, torch.Tensor]:
    """Training losses (dropout off, train mode, then eval again) of a (2, 3, *size) batch and random labels
    (seed 2) whose first ``ignore_rows`` rows are 255: same keys, values within ``tol``. Returns ours."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, *size, generator=generator)
    labels = torch.randint(0, ours.num_classes, (2, *size), generator=generator)
    if ignore_rows:
        labels[:, :ignore_rows] = 255
    for model in (oracle, ours):
        model.train()
        set_dropout_off(model)
    try:
        expected = oracle_loss(oracle, x, labels)
        got = ours.loss(x, labels)
    finally:
        oracle.eval()
        ours.eval()
    assert set(got) == set(expected)
    for key in expected:
        assert abs(got[key].item() - expected[key].item()) < tol, key
    return got


def calibrate_norms_(oracle: nn.Module, seed: int = 7) -> nn.Module:
    """Give an oracle model's BatchNorms running statistics near those of their actual inputs, in place;
    returns it.

    ``randomize_``'s statistics (mean ~ N(0, 1), var ~ U(0.5, 1.5)) do not normalize: through ResNet-101's 33
    residual blocks or HRNet's narrowed transitions the logits reach ~1e5, and the object attention, whose
    keys are normalized over only N x K regions, gets similarities in the thousands; float32 rounding alone
    then exceeds 1e-4. Here each norm, in the order the eval-mode forward of six random images reaches it,
    gets its input's per-channel mean (+ 0.1 std N(0, 1)) and variance (x U(0.5, 1.5)): still random, not
    (0, 1), and the logits stay O(1).
    """
    gen = torch.Generator().manual_seed(seed)

    def set_statistics(norm: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        var, mean = torch.var_mean(args[0].transpose(0, 1).flatten(1), dim=1, unbiased=False)
        norm.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn(mean.shape, generator=gen))
        norm.running_var.copy_(var * (torch.rand(var.shape, generator=gen) + 0.5))

    norms = [m for m in oracle.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
    try:
        oracle_encode_decode(oracle.eval(), torch.randn(6, 3, 41, 53, generator=gen))
    finally:
        for handle in handles:
            handle.remove()
    return oracle
