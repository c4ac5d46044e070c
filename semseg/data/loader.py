"""Samplers, collate functions and ``build_dataloader`` for the configs' ``*_dataloader`` dicts.

Samplers know the ``torch.distributed`` rank and world size: each rank takes a disjoint share of every
permutation (position ``rank``, ``rank + world_size``, ...), so no sample is read twice per round.
Orders are ``torch.randperm`` with a generator seeded by ``seed`` (``seed + epoch`` for
``DefaultSampler``), the same on every rank, so the shares fit together.

``InfiniteSampler`` streams permutation after permutation for iteration-based training. The Trainer
resumes through ``build_train_stream(start=iterations x batch_size)``: the stream continues at that
position and each sample's augmentation is seeded by its position in the global stream (not by worker RNG
states, which a checkpoint cannot hold), so a run resumed at iteration i sees the same augmented samples
as one that never stopped, whatever the number of workers. For loops of one's own, the loader that
``build_dataloader`` returns also reports its position (``state_dict``, advanced per batch *delivered*,
since workers read ahead) and continues from one (``load_state_dict``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from semseg.build import build
from semseg.threads import limit_worker_threads


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shared_seed(seed: int | None) -> int:
    """``seed``, or a random seed drawn on rank 0 and broadcast, so that every rank uses the same one."""
    if seed is not None:
        return int(seed)
    value = torch.tensor(np.random.randint(2**31), dtype=torch.int64)
    if dist_info()[1] > 1:
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        value = value.to(backend_device)
        dist.broadcast(value, src=0)
    return int(value.item())


class InfiniteSampler(Sampler[int]):
    """Endless indices for iteration-based training: permutation after permutation (or 0..N-1 repeated
    without ``shuffle``), each rank taking every ``world_size``-th index from position ``rank``.

    ``consumed`` counts the samples of the global stream already used by all ranks together; iteration
    starts there. ``rank`` / ``world_size`` default to the process group's.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int | None = None,
                 rank: int | None = None, world_size: int | None = None):
        default_rank, default_world = dist_info()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.size = len(dataset)
        if self.size == 0:
            raise ValueError("InfiniteSampler: the dataset is empty")
        self.shuffle = shuffle
        self.seed = shared_seed(seed)
        self.consumed = 0

    def _stream(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=generator).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[int]:
        start = self.consumed + self.rank
        return itertools.islice(self._stream(), start, None, self.world_size)

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Epochs do not change an endless stream; kept so loops can call it on any sampler."""

    def advance(self, num_samples: int) -> None:
        """Count ``num_samples`` more samples (all ranks together) as consumed."""
        self.consumed += int(num_samples)

    def state_dict(self) -> dict:
        """``seed``, ``shuffle`` and ``consumed``: what a resumed run needs to continue the stream."""
        return {"seed": self.seed, "shuffle": self.shuffle, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream of a saved state; the next iteration starts at its ``consumed``."""
        self.seed = int(state["seed"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self.consumed = int(state["consumed"])


class DefaultSampler(Sampler[int]):
    """One epoch of indices (shuffled with ``seed + epoch``), split across ranks.

    ``round_up``: every rank gets ``ceil(N / world_size)`` indices, the order wrapped around to fill the
    last round; otherwise the ranks share exactly N indices (the last ranks may get one fewer).
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int | None = None, round_up: bool = True,
                 rank: int | None = None, world_size: int | None = None):
        default_rank, default_world = dist_info()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.size = len(dataset)
        self.shuffle = shuffle
        self.seed = shared_seed(seed)
        self.round_up = round_up
        self.epoch = 0
        if round_up:
            self.num_samples = math.ceil(self.size / self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = math.ceil((self.size - self.rank) / self.world_size)
            self.total_size = self.size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.round_up and order:
            order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]
        return iter(order[self.rank : self.total_size : self.world_size])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (seeded ``seed + epoch``) on the next iteration."""
        self.epoch = epoch


def pseudo_collate(samples: Sequence[Any]) -> Any:
    """A batch as lists: dict samples -> a dict of lists (``inputs``: [(3, H, W), ...], ``gt_sem_seg``:
    [(H, W), ...], ``meta``: [dict, ...]). Nothing is stacked, so images may differ in size."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    first = samples[0]
    if isinstance(first, dict):
        keys = set(first)
        for i, sample in enumerate(samples):
            if set(sample) != keys:
                raise ValueError(f"batch sample {i} has keys {sorted(sample)}, sample 0 has {sorted(keys)}")
        return {key: [sample[key] for sample in samples] for key in first}
    return list(samples)


def collate(samples: Sequence[Any]) -> Any:
    """Like ``pseudo_collate``, but tensors are stacked into one (N, ...) tensor; they must share a shape."""
    batch = pseudo_collate(samples)
    if not isinstance(batch, dict):
        return batch
    for key, values in batch.items():
        if values and all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack {key!r} of shapes {sorted(shapes)}; use pseudo_collate")
            batch[key] = torch.stack(values)
    return batch


COLLATE_FUNCTIONS = {"pseudo_collate": pseudo_collate, "default_collate": collate, "collate": collate}


def seed_worker(worker_id: int, num_workers: int, rank: int, seed: int) -> None:
    """Seed Python, NumPy and torch in a loader worker: distinct per (rank, worker), fixed per ``seed``; one
    thread per worker (torch's and OpenCV's)."""
    limit_worker_threads()
    worker_seed = (num_workers * rank + worker_id + seed) % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    torch.manual_seed(worker_seed)


class PositionSampler(Sampler[tuple[int, int]]):
    """(global stream position, index) pairs from an ``InfiniteSampler``, for ``PositionSeeded``."""

    def __init__(self, sampler: InfiniteSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = self.sampler.consumed + self.sampler.rank
        positions = itertools.count(first, self.sampler.world_size)
        return zip(positions, iter(self.sampler), strict=False)

    def __len__(self) -> int:
        return len(self.sampler)

    def state_dict(self) -> dict:
        """The wrapped sampler's state."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the wrapped sampler's state."""
        self.sampler.load_state_dict(state)


class PositionSeeded(Dataset):
    """Serves ``dataset[index]`` for a ``(position, index)`` key with the global generators (``random``,
    NumPy, torch) seeded from ``(seed, position)`` during the pipeline, then restored."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    @property
    def metainfo(self) -> dict:
        """The wrapped dataset's metainfo."""
        return self.dataset.metainfo

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        position, index = key
        sample_seed = int(np.random.SeedSequence([self.seed, int(position)]).generate_state(1)[0])
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        torch.manual_seed(sample_seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def _sampler_of(loader: DataLoader) -> Any:
    sampler = loader.batch_sampler.sampler if loader.batch_sampler is not None else loader.sampler
    return sampler.sampler if isinstance(sampler, PositionSampler) else sampler


class SegDataLoader(DataLoader):
    """A DataLoader that advances an ``InfiniteSampler``'s position per batch it hands out, so that
    ``state_dict`` is exact even though the workers read ahead."""

    def __iter__(self) -> Iterator[Any]:
        sampler = _sampler_of(self)
        world_size = getattr(sampler, "world_size", 1)
        for batch in super().__iter__():
            if isinstance(sampler, InfiniteSampler):
                sampler.advance(self.batch_size * world_size)
            yield batch

    def state_dict(self) -> dict:
        """The sampler's state (``{}`` for a sampler without one)."""
        sampler = _sampler_of(self)
        return sampler.state_dict() if hasattr(sampler, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the sampler's state, if it keeps one."""
        sampler = _sampler_of(self)
        if hasattr(sampler, "load_state_dict"):
            sampler.load_state_dict(state)


def build_dataloader(cfg: dict, seed: int | None = None, shuffle: bool | None = None) -> SegDataLoader:
    """A DataLoader from a config's ``train_dataloader`` / ``val_dataloader`` dict.

    Keys: ``dataset`` (a dataset config or object), ``sampler`` (``dict(type='InfiniteSampler' |
    'DefaultSampler', shuffle=...)``), ``batch_size``, ``num_workers``, ``persistent_workers``,
    ``pin_memory``, ``drop_last``, ``collate_fn`` (``dict(type='pseudo_collate' | 'default_collate')``,
    default pseudo_collate). ``seed`` seeds the sampler (unless it names its own) and the workers;
    ``shuffle``, when given, overrides the sampler's.
    """
    loader, _ = _build(cfg, seed, shuffle)
    return loader


def _build(cfg: dict, seed: int | None, shuffle: bool | None,
           start: int | None = None) -> tuple[SegDataLoader, Any]:
    """The loader and the dataset it reads; ``start`` makes a position-seeded stream (build_train_stream)."""
    cfg = dict(cfg)
    known = {"dataset", "sampler", "batch_size", "num_workers", "persistent_workers", "pin_memory",
             "drop_last", "collate_fn", "prefetch_factor", "batch_sampler"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise KeyError(f"unknown dataloader keys {unknown} (known: {', '.join(sorted(known))})")
    if cfg.get("batch_sampler") is not None:
        raise NotImplementedError("batch_sampler configs are not supported; use sampler and batch_size")
    dataset = cfg["dataset"]
    if isinstance(dataset, dict):
        dataset = build("dataset", dataset)
    sampler_cfg = dict(cfg.get("sampler") or {"type": "DefaultSampler", "shuffle": False})
    sampler_cfg.setdefault("seed", seed)
    if shuffle is not None:
        sampler_cfg["shuffle"] = shuffle
    sampler = build("data_sampler", sampler_cfg, dataset=dataset)
    worker_seed = seed if seed is not None else sampler.seed
    served: Dataset = dataset
    if start is not None:
        if not isinstance(sampler, InfiniteSampler):
            raise ValueError("a training stream needs an InfiniteSampler, the config has "
                             f"{sampler_cfg['type']}")
        sampler.consumed = int(start) * sampler.world_size
        served = PositionSeeded(dataset, sampler.seed)
        sampler = PositionSampler(sampler)
    collate_cfg = cfg.get("collate_fn") or {"type": "pseudo_collate"}
    collate_name = collate_cfg["type"] if isinstance(collate_cfg, dict) else collate_cfg
    if collate_name not in COLLATE_FUNCTIONS:
        raise KeyError(f"unknown collate_fn {collate_name!r} (known: {', '.join(COLLATE_FUNCTIONS)})")

    num_workers = int(cfg.get("num_workers", 0))
    rank, _ = dist_info()
    init_fn = partial(seed_worker, num_workers=num_workers, rank=rank, seed=worker_seed) \
        if num_workers else None
    extra = {"prefetch_factor": cfg["prefetch_factor"]} if num_workers and "prefetch_factor" in cfg else {}
    loader = SegDataLoader(
        served,
        batch_size=int(cfg.get("batch_size", 1)),
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=COLLATE_FUNCTIONS[collate_name],
        pin_memory=bool(cfg.get("pin_memory", False)),
        drop_last=bool(cfg.get("drop_last", False)),
        persistent_workers=bool(cfg.get("persistent_workers", False)) and num_workers > 0,
        worker_init_fn=init_fn,
        **extra,
    )
    return loader, dataset


def build_train_stream(cfg: dict, seed: int | None = None, start: int = 0) -> tuple[SegDataLoader, Any]:
    """The endless training loader of a ``train_dataloader`` config (its sampler must be an
    ``InfiniteSampler``) and the dataset it reads.

    ``start``: samples this rank has already consumed (iterations done x ``batch_size``); the stream
    continues there. Each sample's pipeline runs with Python's, NumPy's and torch's global generators
    seeded from ``(seed, position in the global stream)``, so augmentations do not depend on workers or
    on where a run was resumed.
    """
    return _build(cfg, seed, None, start=start)
