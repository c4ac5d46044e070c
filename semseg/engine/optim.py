"""Optimizer wrappers built from a config's ``optim_wrapper`` dict, with mmengine's semantics.

A config says::

    optim_wrapper = dict(type='OptimWrapper',            # or 'AmpOptimWrapper' (loss_scale, dtype)
                         optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005),
                         clip_grad=dict(max_norm=1, norm_type=2),   # or None
                         accumulative_counts=1,
                         paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=10.)}, norm_decay_mult=0.))

``build_optim_wrapper(model, cfg)`` makes the torch optimizer over the model's parameter groups and wraps it.
The trainer then calls ``update_params(loss)`` once per iteration inside ``optim_context(model)``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from semseg.build import accepted_arguments, build, lookup
from semseg.engine.layer_decay import LAYER_DECAY_CONSTRUCTORS, layer_decay_groups

log = logging.getLogger(__name__)

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
IMPLEMENTATION_KEYS = ("foreach", "fused")  # how torch runs a step, not what it computes
FUSED_ON_CUDA = ("SGD", "Adam", "AdamW")  # torch's fused CUDA kernels (Adagrad's is CPU-only in some versions)
PARAMWISE_KEYS = ("custom_keys", "bias_lr_mult", "bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult",
                  "flat_decay_mult", "bypass_duplicate", "dcn_offset_lr_mult")


def paramwise_groups(model: nn.Module, base_lr: float | None, base_wd: float | None,
                     paramwise_cfg: dict) -> list[dict]:
    """One parameter group per trainable parameter, with mmengine's param-wise lr / weight-decay rules.

    Parameters are visited module by module (a module's own parameters, then its children in order), and
    each gets ``lr`` / ``weight_decay`` only where a rule applies (otherwise the optimizer's defaults):

    - ``custom_keys`` {substring: dict(lr_mult, decay_mult)}: the longest key (ties: alphabetically first)
      that is a substring of the parameter's full name ('backbone.layer1.0.conv1.weight'; a parameter of
      the top module is '.name') sets lr = base_lr * lr_mult, weight_decay = base_wd * decay_mult, and
      its items are copied into the group; no other rule then applies.
    - otherwise ``bias_lr_mult`` scales the lr of a ``bias`` outside norm layers, and the first of
      ``norm_decay_mult`` (BN/SyncBN/IN/GN/LN weight and bias), ``bias_decay_mult`` (any other bias),
      ``dwconv_decay_mult`` (a Conv2d with groups == in_channels), ``flat_decay_mult`` (any 1-d
      parameter) that applies scales the weight decay.
    - frozen parameters (``requires_grad=False``) are left out; with ``bypass_duplicate`` a parameter met
      again through a shared module is skipped (without it the optimizer rejects the duplicate).

    ``dcn_offset_lr_mult`` has no effect: semseg has no deformable convolutions.
    """
    unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
    if unknown:
        raise KeyError(f"unknown paramwise_cfg keys {unknown} (known: {', '.join(PARAMWISE_KEYS)})")
    custom_keys = paramwise_cfg.get("custom_keys", {})
    if not isinstance(custom_keys, dict):
        raise TypeError(f"paramwise_cfg.custom_keys must be a dict, got {type(custom_keys).__name__}")
    for key, rule in custom_keys.items():
        ignored = sorted(set(rule) - {"lr_mult", "decay_mult"})
        if ignored:  # MMSegmentation ignores them too (DNLNet's configs set `wd_mult`): say so, keep going
            log.warning("paramwise_cfg.custom_keys[%r] sets %s, which has no effect (only lr_mult and "
                        "decay_mult are read)", key, ", ".join(ignored))
    decay_rules = ("bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult")
    needs_wd = any("decay_mult" in v for v in custom_keys.values()) or any(k in paramwise_cfg for k in decay_rules)
    if needs_wd and base_wd is None:
        raise ValueError("paramwise_cfg sets a decay_mult but the optimizer has no weight_decay")
    keys = sorted(sorted(custom_keys), key=len, reverse=True)
    bias_lr_mult = paramwise_cfg.get("bias_lr_mult")
    mults = {rule: paramwise_cfg.get(rule) for rule in (*decay_rules, "flat_decay_mult")}
    bypass_duplicate = paramwise_cfg.get("bypass_duplicate", False)

    groups: list[dict] = []
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        is_norm = isinstance(module, NORM_TYPES)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for name, param in module.named_parameters(recurse=False):
            full_name = f"{prefix}.{name}"
            if bypass_duplicate and id(param) in seen:
                log.warning("%s is shared with an earlier module; skipped (bypass_duplicate)", full_name)
                continue
            if not param.requires_grad:
                continue
            seen.add(id(param))
            group: dict[str, Any] = {"params": [param]}
            key = next((k for k in keys if k in full_name), None)
            if key is not None:
                group["lr"] = base_lr * custom_keys[key].get("lr_mult", 1.0)
                if base_wd is not None:
                    group["weight_decay"] = base_wd * custom_keys[key].get("decay_mult", 1.0)
                group.update(custom_keys[key])
            else:
                if name == "bias" and not is_norm and bias_lr_mult is not None:
                    group["lr"] = base_lr * bias_lr_mult
                if base_wd is not None:
                    applies = {"norm_decay_mult": is_norm, "bias_decay_mult": name == "bias",
                               "dwconv_decay_mult": is_dwconv, "flat_decay_mult": param.ndim == 1}
                    rule = next((r for r, hit in applies.items() if hit and mults[r] is not None), None)
                    if rule is not None:
                        group["weight_decay"] = base_wd * mults[rule]
            groups.append(group)
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)

    visit(model, "")
    return groups


class OptimWrapper:
    """A torch optimizer plus gradient accumulation and clipping (mmengine's ``OptimWrapper``).

    Args:
        optimizer: the torch optimizer.
        accumulative_counts: ``update_params`` steps the optimizer every this many calls; each loss is
            divided by this count (by the remainder for the last, incomplete window when
            ``initialize_count_status`` gave the run's length), so accumulating k batches of size b
            equals one batch of size k*b for a mean loss.
        clip_grad: ``dict(max_norm=..., norm_type=2)`` for ``clip_grad_norm_``, or with ``type='value'``
            ``dict(clip_value=...)`` for ``clip_grad_value_``; None for no clipping.

    When the optimizer has several parameter groups, ``param_groups`` adds a last pseudo group holding the
    optimizer's defaults (mmengine's ``base_param_settings``): the lr schedulers move it too, so
    ``get_lr()['base_lr']`` is the scheduled lr without param-wise multipliers, for logs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, accumulative_counts: int = 1,
                 clip_grad: dict | None = None) -> None:
        if accumulative_counts < 1:
            raise ValueError(f"accumulative_counts must be >= 1, got {accumulative_counts}")
        self.optimizer = optimizer
        self.accumulative_counts = accumulative_counts
        self.clip_func, self.clip_kwargs = None, None
        if clip_grad is not None:
            clip_grad = dict(clip_grad)
            clip_type = clip_grad.pop("type", "norm")
            if clip_type not in ("norm", "value") or not clip_grad:
                raise ValueError("clip_grad must be dict(max_norm=..., norm_type=...) or "
                                 f"dict(type='value', clip_value=...), got {clip_grad!r} with type {clip_type!r}")
            self.clip_func = nn.utils.clip_grad_norm_ if clip_type == "norm" else nn.utils.clip_grad_value_
            self.clip_kwargs = clip_grad
        self._grad_norm: torch.Tensor | None = None  # kept on the device: reading it synchronizes
        self.inner_count = 0  # backward passes so far
        self.max_counts = -1
        self.remainder_counts = -1
        self.base_param_settings = dict(optimizer.defaults) if len(optimizer.param_groups) > 1 else None

    @property
    def last_grad_norm(self) -> float | None:
        """The total gradient norm before clipping at the last step (None without clipping); for logs."""
        return None if self._grad_norm is None else float(self._grad_norm)

    # -- parameter groups -----------------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict]:
        """The optimizer's groups, plus the defaults pseudo group when there are several (see class doc)."""
        extra = [self.base_param_settings] if self.base_param_settings is not None else []
        return self.optimizer.param_groups + extra

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    def get_lr(self) -> dict[str, list[float]]:
        """``{'lr': [per group]}``, with ``'base_lr': [lr without multipliers]`` when there are several groups."""
        res = {"lr": [group["lr"] for group in self.optimizer.param_groups]}
        if self.base_param_settings is not None:
            res = {"base_lr": [self.base_param_settings["lr"]], **res}
        return res

    def get_momentum(self) -> dict[str, list[float]]:
        """``{'momentum': [per group]}``: SGD's momentum, Adam's beta1, else 0."""
        groups = self.optimizer.param_groups
        return {"momentum": [g.get("momentum", g["betas"][0] if "betas" in g else 0) for g in groups]}

    # -- gradient accumulation ------------------------------------------------------------------------------
    def initialize_count_status(self, init_counts: int, max_counts: int) -> None:
        """Tell the wrapper where the run starts (resume) and ends, so the last window divides correctly."""
        if init_counts % self.accumulative_counts:
            log.warning("resuming at iteration %d, not a multiple of accumulative_counts=%d: the gradients "
                        "of the interrupted window are lost", init_counts, self.accumulative_counts)
        self.inner_count = init_counts
        self.max_counts = max_counts
        self.remainder_counts = max_counts % self.accumulative_counts

    def should_update(self) -> bool:
        """Whether the backward pass just done closes an accumulation window."""
        return self.inner_count % self.accumulative_counts == 0 or self.inner_count == self.max_counts

    def should_sync(self) -> bool:
        """Whether the coming backward pass closes a window (DDP must then all-reduce the gradients)."""
        count = self.inner_count + 1
        return count % self.accumulative_counts == 0 or count == self.max_counts

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss divided by the number of batches accumulated in the current window."""
        if self.accumulative_counts == 1:
            return loss
        factor = self.accumulative_counts
        if self.max_counts != -1 and self.inner_count >= self.max_counts - self.remainder_counts:
            factor = self.remainder_counts
        return loss / factor

    # -- the update -----------------------------------------------------------------------------------------
    def update_params(self, loss: torch.Tensor) -> None:
        """Backward of ``loss`` (scaled for accumulation); at a window's end: clip, step, zero the grads."""
        self.backward(self.scale_loss(loss))
        if self.should_update():
            self.step()
            self.zero_grad()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.inner_count += 1

    def step(self) -> None:
        self._clip_grad()
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def _clip_grad(self) -> None:
        if self.clip_func is None:
            return
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad and p.grad is not None]
        if params:
            self._grad_norm = self.clip_func(params, **self.clip_kwargs)  # a tensor (norm) or None (value)

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module | None = None) -> Iterator[None]:
        """Wrap the forward pass: skips DDP's gradient all-reduce inside an accumulation window."""
        if model is not None and hasattr(model, "no_sync") and not self.should_sync():
            with model.no_sync():
                yield
        else:
            yield

    # -- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state dict (mmengine's layout: plus ``base_param_settings`` when present)."""
        state = self.optimizer.state_dict()
        if self.base_param_settings is not None:
            state["base_param_settings"] = dict(self.base_param_settings)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict; the groups keep this run's ``foreach`` / ``fused`` choice, not the saved one
        (torch would take the saved groups' settings, so a run could not change them on resuming)."""
        state_dict = dict(state_dict)
        base = state_dict.pop("base_param_settings", None)
        if base is not None:
            base.pop("params", None)  # mmengine stores a placeholder tensor there
            self.base_param_settings = dict(base)
        chosen = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state_dict)
        for group, kept in zip(self.optimizer.param_groups, chosen, strict=True):
            for key in IMPLEMENTATION_KEYS:
                group.pop(key, None)
            group.update(kept)


def float16_problem(device_type: str) -> str | None:
    """Why float16 autocast with a gradient scaler cannot run on ``device_type`` with this torch, or None.

    ``torch.amp.GradScaler`` came with torch 2.3 (for CPUs too); CPU autocast casts to float16 from torch
    2.2 (before, it warns and runs float32). A tiny matmul under autocast tells whether the cast happens.
    """
    if getattr(torch.amp, "GradScaler", None) is None:
        return f"torch {torch.__version__} has no torch.amp.GradScaler (torch >= 2.3 has)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns, then disables, where a device lacks either
        try:
            if not torch.amp.GradScaler(device_type).is_enabled():
                return f"torch {torch.__version__} has no gradient scaler for {device_type!r} on this machine"
            with torch.autocast(device_type=device_type, dtype=torch.float16):
                ones = torch.ones(1, 1, device=device_type)
                cast = (ones @ ones).dtype == torch.float16
        except (RuntimeError, AssertionError) as error:  # torch raises AssertionError for a missing backend
            return f"{type(error).__name__}: {error}"
    if not cast:
        return f"torch {torch.__version__} does not autocast to float16 on {device_type!r}"
    return None


class AmpOptimWrapper(OptimWrapper):
    """Mixed precision: ``optim_context`` runs the forward under ``torch.autocast``.

    Args:
        loss_scale: float16 only: ``'dynamic'`` (``torch.amp.GradScaler`` defaults), a number (a fixed
            scale, as mmengine: the scaler is reset to it after every step) or a dict of GradScaler kwargs.
        dtype: ``'float16'`` or ``'bfloat16'``; None picks float16 on GPUs and bfloat16 on CPUs (mmengine's
            autocast defaults). bfloat16 has float32's range, so it runs without a loss scaler (mmengine
            keeps one; unscaled steps differ from its only in rounding) and ``loss_scale`` is unused.
            float16 runs with a ``torch.amp.GradScaler`` on GPUs and, with torch >= 2.3, on CPUs; where
            torch has no float16 autocast or scaler for the device, a RuntimeError says so and names the fix.
        **kwargs: ``OptimWrapper``'s (accumulative_counts, clip_grad).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, loss_scale: str | float | dict = "dynamic",
                 dtype: str | torch.dtype | None = None, accumulative_counts: int = 1,
                 clip_grad: dict | None = None) -> None:
        super().__init__(optimizer, accumulative_counts=accumulative_counts, clip_grad=clip_grad)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.device_type = params[0].device.type if params else "cpu"
        if dtype is None:
            dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16
            if dtype == torch.bfloat16:
                log.info("AmpOptimWrapper on %s: bfloat16 autocast without a loss scaler (loss_scale unused); set "
                         "optim_wrapper.dtype='float16' for float16 with a gradient scaler", self.device_type)
        if isinstance(dtype, str):
            if dtype not in ("float16", "bfloat16"):
                raise ValueError(f"AmpOptimWrapper dtype must be 'float16' or 'bfloat16', got {dtype!r}")
            dtype = getattr(torch, dtype)
        self.cast_dtype = dtype
        self.fixed_scale = None
        self.loss_scaler = None
        self.skipped_steps = 0  # float16: optimizer steps the loss scaler skipped for inf/NaN gradients
        if dtype != torch.float16:
            return
        if loss_scale == "dynamic":
            scaler_kwargs = {}
        elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
            self.fixed_scale = float(loss_scale)
            scaler_kwargs = {"init_scale": self.fixed_scale}
        elif isinstance(loss_scale, dict):
            scaler_kwargs = dict(loss_scale)
        else:
            raise TypeError(f"loss_scale must be 'dynamic', a number or a dict, got {loss_scale!r}")
        problem = float16_problem(self.device_type)
        if problem is not None:
            raise RuntimeError(f"float16 mixed precision cannot train on {self.device_type!r} here: {problem}. "
                               "Set optim_wrapper.dtype='bfloat16' (float32's range: it needs no loss scaling) "
                               "or train on a device with float16 autocast and a gradient scaler (a CUDA GPU)")
        self.loss_scaler = torch.amp.GradScaler(self.device_type, **scaler_kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        if self.loss_scaler is not None:
            loss = self.loss_scaler.scale(loss)
        super().backward(loss)

    def step(self) -> None:
        if self.loss_scaler is None:
            super().step()
            return
        if self.clip_func is not None:
            self.loss_scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            self._clip_grad()
        self.loss_scaler.step(self.optimizer)  # skipped when the gradients hold inf/NaN
        # GradScaler.step has read these flags on the host already (no extra synchronization); update() clears them
        found_inf = self.loss_scaler._found_inf_per_device(self.optimizer)
        if any(bool(flag) for flag in found_inf.values()):
            self.skipped_steps += 1
        self.loss_scaler.update(self.fixed_scale)

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module | None = None) -> Iterator[None]:
        with super().optim_context(model), torch.autocast(device_type=self.device_type, dtype=self.cast_dtype):
            yield

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.loss_scaler is not None:
            state["loss_scaler"] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        scaler_state = state_dict.pop("loss_scaler", None)
        if scaler_state is not None and self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(scaler_state)
        super().load_state_dict(state_dict)


def fast_step_arguments(optimizer_cfg: dict, params: list[torch.Tensor]) -> dict[str, bool]:
    """The optimizer arguments for a faster step over ``params``: ``fused=True`` for SGD, Adam and AdamW
    when every parameter is a floating-point CUDA tensor, else ``foreach=True``; nothing when
    ``optimizer_cfg`` sets either.

    foreach steps compute what the per-parameter loop computes (equal bit for bit on CPUs). Fused steps
    may round differently (on CPUs, torch's fused SGD moves some weights by 1 ulp, so CPUs stay with
    foreach). With ``paramwise_cfg`` every parameter is a group of its own, and neither has much to batch.
    """
    if any(key in optimizer_cfg for key in IMPLEMENTATION_KEYS):
        return {}
    name = optimizer_cfg["type"]
    accepted = accepted_arguments(lookup("optimizer", name)) or set()
    on_cuda = bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)
    if on_cuda and name in FUSED_ON_CUDA and "fused" in accepted:
        return {"fused": True}
    return {"foreach": True} if "foreach" in accepted else {}


def build_optim_wrapper(model: nn.Module, optim_wrapper_cfg: dict, fused_optimizer: bool = False) -> OptimWrapper:
    """The wrapper a config's ``optim_wrapper`` dict describes, over ``model``'s parameters.

    Without ``paramwise_cfg`` the optimizer gets ``model.parameters()`` as one group (frozen ones included,
    as mmengine). A DDP-wrapped model is unwrapped. The config dict is not modified.
    ``fused_optimizer``: a fused or foreach step (:func:`fast_step_arguments`) unless the config picks one.
    """
    cfg = copy.deepcopy(dict(optim_wrapper_cfg))
    constructor = cfg.pop("constructor", "DefaultOptimWrapperConstructor")
    if constructor not in ("DefaultOptimWrapperConstructor", *LAYER_DECAY_CONSTRUCTORS):
        raise NotImplementedError(f"optim_wrapper constructor {constructor!r} is not supported (the default "
                                  f"one, with paramwise_cfg, and {', '.join(LAYER_DECAY_CONSTRUCTORS)})")
    if "optimizer" not in cfg:
        raise KeyError("optim_wrapper needs an 'optimizer' dict, e.g. dict(type='SGD', lr=0.01)")
    optimizer_cfg = cfg.pop("optimizer")
    paramwise_cfg = cfg.pop("paramwise_cfg", None) or {}
    wrapper_type = cfg.pop("type", "OptimWrapper")
    model = getattr(model, "module", model)
    if constructor in LAYER_DECAY_CONSTRUCTORS:
        params: Any = layer_decay_groups(model, optimizer_cfg.get("lr"), optimizer_cfg.get("weight_decay"),
                                         paramwise_cfg, constructor)
    elif paramwise_cfg:
        params = paramwise_groups(model, optimizer_cfg.get("lr"), optimizer_cfg.get("weight_decay"),
                                       paramwise_cfg)
    else:
        params = model.parameters()
    fast = fast_step_arguments(optimizer_cfg, list(model.parameters())) if fused_optimizer else {}
    optimizer = build("optimizer", optimizer_cfg, params=params, **fast)
    return build("optim_wrapper", {"type": wrapper_type, **cfg}, optimizer=optimizer)
