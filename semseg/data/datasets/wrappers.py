"""Dataset wrappers the configs name: ``RepeatDataset`` (one dataset ``times`` over, e.g. the retinal
datasets' 40000 repeats) and ``ConcatDataset`` (VOC train + SBD aug). A wrapped dataset may be given as a
config dict; it is built through the dataset table."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from semseg.build import build


def _as_dataset(dataset: Dataset | dict) -> Dataset:
    return build("dataset", dataset) if isinstance(dataset, dict) else dataset


class RepeatDataset(Dataset):
    """``dataset`` repeated ``times`` over: index i is sample ``i % len(dataset)``. Nothing is counted
    before first use, so ``lazy_init`` (accepted for config compatibility) changes nothing."""

    def __init__(self, dataset: Dataset | dict, times: int, lazy_init: bool = False):
        if times < 1:
            raise ValueError(f"RepeatDataset: times must be at least 1, got {times}")
        self.dataset = _as_dataset(dataset)
        self.times = int(times)

    @property
    def metainfo(self) -> dict:
        """The wrapped dataset's metainfo."""
        return self.dataset.metainfo

    def _inner_index(self, idx: int) -> int:
        size = len(self)
        if not -size <= idx < size:
            raise IndexError(f"RepeatDataset: index {idx} out of range for {size} samples")
        return (idx % size) % len(self.dataset)

    def __len__(self) -> int:
        return self.times * len(self.dataset)

    def get_data_info(self, idx: int) -> dict:
        """The wrapped dataset's info dict for position ``idx``."""
        return self.dataset.get_data_info(self._inner_index(idx))

    def __getitem__(self, idx: int) -> Any:
        return self.dataset[self._inner_index(idx)]


class ConcatDataset(Dataset):
    """``datasets`` one after the other. Their metainfo must agree, except the keys in ``ignore_keys``;
    the first one's is the concatenation's. ``lazy_init`` defers counting the samples to first use."""

    def __init__(self, datasets: Sequence[Dataset | dict], lazy_init: bool = False,
                 ignore_keys: str | Sequence[str] | None = None):
        if not datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        self.datasets = [_as_dataset(d) for d in datasets]
        ignore = {ignore_keys} if isinstance(ignore_keys, str) else set(ignore_keys or ())
        first = self.datasets[0].metainfo
        for i, dataset in enumerate(self.datasets[1:], start=1):
            other = dataset.metainfo
            for key in (set(first) | set(other)) - ignore:
                if first.get(key) != other.get(key):
                    raise ValueError(f"ConcatDataset: dataset {i} ({type(dataset).__name__}) has a different "
                                     f"metainfo {key!r} than dataset 0; list the key in ignore_keys if "
                                     "intended")
        self._metainfo = first
        self._cumulative_sizes: list[int] | None = None
        if not lazy_init:
            self.full_init()

    def full_init(self) -> None:
        """Count the samples of every dataset (which lists their files)."""
        if self._cumulative_sizes is None:
            self._cumulative_sizes = list(itertools.accumulate(len(dataset) for dataset in self.datasets))

    @property
    def cumulative_sizes(self) -> list[int]:
        """The running totals of the datasets' lengths."""
        self.full_init()
        return self._cumulative_sizes

    @property
    def metainfo(self) -> dict:
        """The first dataset's metainfo."""
        return dict(self._metainfo)

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def locate(self, idx: int) -> tuple[int, int]:
        """(dataset number, index inside it) of position ``idx``."""
        size = len(self)
        if not -size <= idx < size:
            raise IndexError(f"ConcatDataset: index {idx} out of range for {size} samples")
        idx %= size
        which = bisect.bisect_right(self.cumulative_sizes, idx)
        start = self.cumulative_sizes[which - 1] if which else 0
        return which, idx - start

    def get_data_info(self, idx: int) -> dict:
        """The info dict of position ``idx`` from the dataset holding it."""
        which, inner = self.locate(idx)
        return self.datasets[which].get_data_info(inner)

    def __getitem__(self, idx: int) -> Any:
        which, inner = self.locate(idx)
        return self.datasets[which][inner]
