"""Learning-rate schedules from a config's ``param_scheduler`` list, with mmengine's semantics.

A config says::

    param_scheduler = [
        dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),      # warm-up
        dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
    ]

How mmengine runs such a list, and so how this module does:

- Every scheduler counts iterations from the start of training; it acts only while the count lies in
  ``[begin, end)``, and its own step count (``last_step``) starts at 0 at ``begin``.
- The schedules are *chainable*: each step derives the next lr of a group from the group's current lr (the
  other schedulers' changes included), not from a closed formula. Schedulers whose ranges overlap multiply.
- Each scheduler makes its first step when it is built (so the lr of iteration 0 is set before training),
  then ``step()`` runs once after every iteration's optimizer step, the schedulers in config order.

The lr lives in the optimizer's param groups (``initial_lr`` beside it, as mmengine/torch store it), so a
checkpoint holds it in the optimizer state; the schedulers' own state is their step counters.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from semseg.build import build

log = logging.getLogger(__name__)

INF = int(1e9)  # mmengine's "no end"


class LRScheduler:
    """Base class: applies ``next_lr`` to every param group while the iteration lies in ``[begin, end)``.

    ``optimizer`` is anything with ``param_groups`` (an ``OptimWrapper`` or a torch optimizer).
    ``by_epoch=True`` is refused: semseg trains by iterations (mmengine would step such a scheduler once per
    epoch, which an iteration-based run never ends).
    """

    def __init__(self, optimizer: Any, begin: int = 0, end: int = INF, by_epoch: bool = False) -> None:
        if by_epoch:
            raise ValueError(f"{type(self).__name__}: by_epoch=True is not supported; semseg trains by "
                             "iterations, set by_epoch=False and give begin/end in iterations")
        if end <= begin:
            raise ValueError(f"{type(self).__name__}: end ({end}) must be larger than begin ({begin})")
        self.optimizer = optimizer
        self.begin = begin
        self.end = end
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.global_step = -1  # iterations seen (-1 before the first step, made here)
        self.last_step = -1  # steps taken inside [begin, end)
        self.step()

    def next_lr(self, lr: float, base_lr: float) -> float:
        """The lr after this step for a group whose lr is now ``lr`` (``base_lr``: its lr before scheduling)."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one iteration; inside ``[begin, end)`` set every group's next lr."""
        self.global_step += 1
        if self.begin <= self.global_step < self.end:
            self.last_step += 1
            for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = self.next_lr(group["lr"], base_lr)

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = state["global_step"]
        self.last_step = state["last_step"]
        self.base_lrs = list(state["base_lrs"])


class PolyLR(LRScheduler):
    """Polynomial decay to ``eta_min`` at the last step of ``[begin, end)``.

    Chained form: lr <- (lr - eta_min) * (1 - 1 / (T - t + 1)) ** power + eta_min, T = end - begin - 1,
    t = last_step; unrolled from the start lr0 it is (lr0 - eta_min) * (1 - t / T) ** power + eta_min.
    """

    def __init__(self, optimizer: Any, eta_min: float = 0.0, power: float = 1.0, begin: int = 0, end: int = INF,
                 by_epoch: bool = False) -> None:
        self.eta_min = eta_min
        self.power = power
        self.total_iters = end - begin - 1
        super().__init__(optimizer, begin=begin, end=end, by_epoch=by_epoch)

    def _eta_min(self, base_lr: float) -> float:
        return self.eta_min

    def next_lr(self, lr: float, base_lr: float) -> float:
        if self.last_step == 0:
            return lr
        eta_min = self._eta_min(base_lr)
        return (lr - eta_min) * (1 - 1 / (self.total_iters - self.last_step + 1)) ** self.power + eta_min


class PolyLRRatio(PolyLR):
    """PolyLR whose floor is ``eta_min_ratio`` times each group's initial lr (MMSegmentation's PolyLRRatio)."""

    def __init__(self, optimizer: Any, eta_min_ratio: float | None = None, eta_min: float = 0.0, power: float = 1.0,
                 begin: int = 0, end: int = INF, by_epoch: bool = False) -> None:
        self.eta_min_ratio = eta_min_ratio
        super().__init__(optimizer, eta_min=eta_min, power=power, begin=begin, end=end, by_epoch=by_epoch)

    def _eta_min(self, base_lr: float) -> float:
        return self.eta_min if self.eta_min_ratio is None else base_lr * self.eta_min_ratio


class LinearLR(LRScheduler):
    """Linear ramp of the lr factor from ``start_factor`` (first step) to ``end_factor`` (last step): warm-up."""

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0, begin: int = 0,
                 end: int = INF, by_epoch: bool = False) -> None:
        for name, value in (("start_factor", start_factor), ("end_factor", end_factor)):
            if not 0 <= value <= 1:
                raise ValueError(f"LinearLR {name} must lie in [0, 1], got {value}")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = end - begin - 1
        super().__init__(optimizer, begin=begin, end=end, by_epoch=by_epoch)

    def next_lr(self, lr: float, base_lr: float) -> float:
        if self.last_step == 0:
            return lr * self.start_factor
        delta = self.end_factor - self.start_factor
        # factor(t) / factor(t - 1) with factor(t) = start + delta * t / T
        return lr * (1.0 + delta / (self.total_iters * self.start_factor + (self.last_step - 1) * delta))


class ConstantLR(LRScheduler):
    """Multiplies the lr by ``factor`` at ``begin`` and restores it at the last step of ``[begin, end)``."""

    def __init__(self, optimizer: Any, factor: float = 1.0 / 3, begin: int = 0, end: int = INF,
                 by_epoch: bool = False) -> None:
        if not 0 <= factor <= 1:
            raise ValueError(f"ConstantLR factor must lie in [0, 1], got {factor}")
        self.factor = factor
        self.total_iters = end - begin - 1
        super().__init__(optimizer, begin=begin, end=end, by_epoch=by_epoch)

    def next_lr(self, lr: float, base_lr: float) -> float:
        if self.last_step == 0:
            return lr * self.factor
        if self.last_step == self.total_iters:
            return lr * (1.0 / self.factor)
        return lr


class StepLR(LRScheduler):
    """Multiplies the lr by ``gamma`` every ``step_size`` steps (counted from ``begin``)."""

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1, begin: int = 0, end: int = INF,
                 by_epoch: bool = False) -> None:
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, begin=begin, end=end, by_epoch=by_epoch)

    def next_lr(self, lr: float, base_lr: float) -> float:
        if self.last_step == 0 or self.last_step % self.step_size:
            return lr
        return lr * self.gamma


class MultiStepLR(LRScheduler):
    """Multiplies the lr by ``gamma`` at each milestone (steps counted from ``begin``, as mmengine counts)."""

    def __init__(self, optimizer: Any, milestones: Sequence[int], gamma: float = 0.1, begin: int = 0,
                 end: int = INF, by_epoch: bool = False) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, begin=begin, end=end, by_epoch=by_epoch)

    def next_lr(self, lr: float, base_lr: float) -> float:
        if self.last_step not in self.milestones:
            return lr
        return lr * self.gamma ** self.milestones[self.last_step]


class ExponentialLR(LRScheduler):
    """Multiplies the lr by ``gamma`` every step after the first."""

    def __init__(self, optimizer: Any, gamma: float, begin: int = 0, end: int = INF, by_epoch: bool = False) -> None:
        self.gamma = gamma
        super().__init__(optimizer, begin=begin, end=end, by_epoch=by_epoch)

    def next_lr(self, lr: float, base_lr: float) -> float:
        return lr if self.last_step == 0 else lr * self.gamma


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the group's lr to ``eta_min`` (or ``eta_min_ratio`` * initial lr) over ``T_max``.

    ``T_max`` defaults to ``end - begin``. Chained form of lr(t) = eta_min + (lr0 - eta_min)(1 + cos(pi t / T)) / 2
    (SGDR without restarts), continuing periodically past ``T_max`` as mmengine's does.
    """

    def __init__(self, optimizer: Any, T_max: int | None = None, eta_min: float | None = None,
                 begin: int = 0, end: int = INF, by_epoch: bool = False, eta_min_ratio: float | None = None) -> None:
        if eta_min is None and eta_min_ratio is None:
            eta_min = 0.0
        if eta_min is not None and eta_min_ratio is not None:
            raise ValueError("CosineAnnealingLR takes eta_min or eta_min_ratio, not both")
        self.T_max = T_max or (end - begin)
        self.eta_min = eta_min
        self.eta_min_ratio = eta_min_ratio
        super().__init__(optimizer, begin=begin, end=end, by_epoch=by_epoch)

    def next_lr(self, lr: float, base_lr: float) -> float:
        eta_min = self.eta_min if self.eta_min_ratio is None else base_lr * self.eta_min_ratio
        t, period = self.last_step, self.T_max
        if t == 0:
            return lr
        if (t - 1 - period) % (2 * period) == 0:
            return lr + (base_lr - eta_min) * (1 - math.cos(math.pi / period)) / 2
        return (1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period)) * (lr - eta_min) \
            + eta_min


class LRSchedulers:
    """The schedulers of one run, stepped together in config order; one checkpoint entry for all."""

    def __init__(self, schedulers: Sequence[LRScheduler]) -> None:
        self.schedulers = list(schedulers)

    def step(self) -> None:
        """Call once per iteration, after the optimizer step."""
        for scheduler in self.schedulers:
            scheduler.step()

    def state_dict(self) -> dict:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the step counters; load the optimizer state too, which holds the lrs themselves."""
        states = state["schedulers"]
        if len(states) != len(self.schedulers):
            raise ValueError(f"checkpoint has {len(states)} lr schedulers but the config builds "
                             f"{len(self.schedulers)}: param_scheduler changed since the checkpoint")
        for scheduler, sub in zip(self.schedulers, states, strict=True):
            scheduler.load_state_dict(sub)


def build_schedulers(param_scheduler_cfg: dict | Sequence[dict] | None, optim_wrapper: Any,
                     max_iters: int | None = None) -> LRSchedulers:
    """Build a config's ``param_scheduler`` (a dict or a list of dicts; None for a constant lr).

    Building makes each scheduler's first step, so the groups hold the lr of iteration 0 afterwards. With
    ``max_iters``, a scheduler that would start at or after the run's end is reported (a shortened run).
    """
    if param_scheduler_cfg is None:
        cfgs: list[dict] = []
    elif isinstance(param_scheduler_cfg, dict):
        cfgs = [param_scheduler_cfg]
    else:
        cfgs = list(param_scheduler_cfg)
    schedulers = []
    for cfg in cfgs:
        cfg = dict(cfg)
        if cfg.pop("convert_to_iter_based", False):
            raise ValueError(f"{cfg.get('type')}: convert_to_iter_based is not supported; give begin/end "
                             "in iterations with by_epoch=False")
        if max_iters is not None and cfg.get("begin", 0) >= max_iters:
            log.warning("%s begins at iteration %d, after the run ends (max_iters=%d): it never acts",
                        cfg.get("type"), cfg.get("begin", 0), max_iters)
        schedulers.append(build("scheduler", cfg, optimizer=optim_wrapper))
    return LRSchedulers(schedulers)
