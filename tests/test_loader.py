"""Samplers shard across (fake) ranks without overlap, are deterministic per seed/epoch and resume at a
position; collate keeps differently sized images apart; build_dataloader yields batches from a config."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import semseg
from semseg.build import build
from semseg.config import Config
from semseg.data.loader import (
    DefaultSampler,
    InfiniteSampler,
    PositionSampler,
    build_dataloader,
    build_train_stream,
    collate,
    pseudo_collate,
)


class Range(Dataset):
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, idx):
        return {"idx": idx, "draw": float(np.random.rand())}


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_infinite_sampler_shards_the_global_stream():
    dataset = Range(12)
    stream = take(InfiniteSampler(dataset, seed=3, rank=0, world_size=1), 48)
    assert sorted(stream[:12]) == list(range(12)) and sorted(stream[12:24]) == list(range(12))
    assert stream[:12] != stream[12:24]  # a new permutation each round
    shards = [take(InfiniteSampler(dataset, seed=3, rank=r, world_size=3), 16) for r in range(3)]
    for r, shard in enumerate(shards):
        assert shard == stream[r::3]
    first_round = [set(shard[:4]) for shard in shards]
    assert set.union(*first_round) == set(range(12)) and sum(map(len, first_round)) == 12
    assert take(InfiniteSampler(dataset, seed=4, rank=0, world_size=1), 12) != stream[:12]
    assert take(InfiniteSampler(dataset, shuffle=False, rank=1, world_size=2), 8) == [1, 3, 5, 7, 9, 11, 1, 3]


def test_infinite_sampler_resumes_at_its_position():
    dataset = Range(10)
    for world_size in (1, 2):
        full = [take(InfiniteSampler(dataset, seed=11, rank=r, world_size=world_size), 20)
                for r in range(world_size)]
        sampler = InfiniteSampler(dataset, seed=11, rank=0, world_size=world_size)
        sampler.advance(6 * world_size)  # each rank used 6 samples
        state = sampler.state_dict()
        assert state == {"seed": 11, "shuffle": True, "consumed": 6 * world_size}
        for r in range(world_size):
            resumed = InfiniteSampler(dataset, seed=0, rank=r, world_size=world_size)
            resumed.load_state_dict(state)
            assert take(resumed, 14) == full[r][6:]


def test_default_sampler_epochs_and_shards():
    dataset = Range(10)
    shards = [list(DefaultSampler(dataset, seed=5, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set(itertools.chain(*shards)) == set(range(10))  # two samples repeat to fill the last round
    exact = [list(DefaultSampler(dataset, seed=5, round_up=False, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in exact] == [4, 3, 3]
    assert [len(DefaultSampler(dataset, round_up=False, rank=r, world_size=3)) for r in range(3)] == [4, 3, 3]
    assert sorted(itertools.chain(*exact)) == list(range(10))
    sampler = DefaultSampler(dataset, seed=5, rank=0, world_size=1)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0 and sorted(epoch0) == list(range(10))
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    assert list(DefaultSampler(dataset, shuffle=False, rank=1, world_size=2)) == [1, 3, 5, 7, 9]


def test_collate_functions():
    samples = [{"inputs": torch.zeros(3, 4, 5), "gt_sem_seg": torch.zeros(4, 5), "meta": {"a": 1}},
               {"inputs": torch.ones(3, 6, 5), "gt_sem_seg": torch.ones(6, 5), "meta": {"a": 2}}]
    batch = pseudo_collate(samples)
    assert [x.shape[1] for x in batch["inputs"]] == [4, 6] and batch["meta"] == [{"a": 1}, {"a": 2}]
    with pytest.raises(ValueError, match="pseudo_collate"):
        collate(samples)
    stacked = collate([samples[0], samples[0]])
    assert stacked["inputs"].shape == (2, 3, 4, 5) and stacked["meta"] == [{"a": 1}, {"a": 1}]
    with pytest.raises(ValueError, match="keys"):
        pseudo_collate([samples[0], {"inputs": torch.zeros(1)}])


SYNTHETIC = {"type": "SyntheticDataset", "num_samples": 6, "img_size": (16, 20),
             "pipeline": [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"},
                          {"type": "PackSegInputs"}]}


def test_build_dataloader_yields_batches_and_resumes():
    cfg = {"batch_size": 4, "num_workers": 0, "persistent_workers": True,
           "sampler": {"type": "InfiniteSampler", "shuffle": True}, "dataset": SYNTHETIC}
    loader = build_dataloader(cfg, seed=0)
    stream = iter(loader)
    batches = [next(stream) for _ in range(5)]
    assert [x.shape for x in batches[0]["inputs"]] == [(3, 16, 20)] * 4
    assert len(batches[0]["gt_sem_seg"]) == 4 and batches[0]["gt_sem_seg"][0].dtype == torch.int64
    assert loader.state_dict()["consumed"] == 20
    resumed = build_dataloader(cfg, seed=123)
    state = build_dataloader(cfg, seed=0).state_dict()
    state["consumed"] = 12  # three batches were used
    resumed.load_state_dict(state)
    for expected, got in zip(batches[3:], iter(resumed), strict=False):
        for a, b in zip(expected["gt_sem_seg"], got["gt_sem_seg"], strict=True):
            assert torch.equal(a, b)

    val = build_dataloader({"batch_size": 1, "num_workers": 0,
                            "sampler": {"type": "DefaultSampler", "shuffle": False}, "dataset": SYNTHETIC})
    assert len(val) == 6 and [b["meta"][0].get("ori_shape") for b in val] == [(16, 20)] * 6


def test_workers_are_seeded_per_worker_and_reproducible():
    cfg = {"batch_size": 2, "num_workers": 2, "persistent_workers": True,
           "sampler": {"type": "DefaultSampler", "shuffle": False}, "dataset": Range(8)}
    first = [batch["draw"] for batch in build_dataloader(cfg, seed=42)]
    second = [batch["draw"] for batch in build_dataloader(cfg, seed=42)]
    assert first == second
    draws = list(itertools.chain(*first))
    assert len(set(draws)) == len(draws)  # the two workers do not share a random stream
    assert [b["draw"] for b in build_dataloader(cfg, seed=43)] != first


def test_dataloader_config_errors():
    with pytest.raises(KeyError, match="InfiniteSampler"):
        build_dataloader({"batch_size": 1, "sampler": {"type": "InfinitSampler"}, "dataset": Range(2)})
    with pytest.raises(KeyError, match="batchsize"):
        build_dataloader({"batchsize": 1, "dataset": Range(2)})
    sampler = build("data_sampler", {"type": "DefaultSampler", "shuffle": False}, dataset=Range(3))
    assert list(sampler) == [0, 1, 2]


def test_shipped_cityscapes_train_dataloader_on_a_fixture_tree(tmp_path):
    for i, stem in enumerate(["aachen/aachen_000000_000019", "bochum/bochum_000000_000313"]):
        for folder, suffix, array in (
                ("leftImg8bit", "_leftImg8bit.png", np.full((32, 64, 3), 40 * i, np.uint8)),
                ("gtFine", "_gtFine_labelTrainIds.png", np.full((32, 64), i, np.uint8))):
            path = tmp_path / folder / "train" / f"{stem}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), array)
    cfg = Config.fromfile(Path(semseg.__file__).parent / "configs/_base_/datasets/cityscapes.py").to_dict()
    loader_cfg = cfg["train_dataloader"]
    loader_cfg["dataset"]["data_root"] = str(tmp_path)
    loader_cfg["num_workers"] = 0
    batch = next(iter(build_dataloader(loader_cfg, seed=0)))
    assert len(batch["inputs"]) == loader_cfg["batch_size"] == 2
    assert all(x.shape == (3, 512, 1024) for x in batch["inputs"])  # RandomResize + RandomCrop(512, 1024)
    assert all(set(torch.unique(y).tolist()) <= {0, 1, 255} for y in batch["gt_sem_seg"])


def _distributed_worker(rank, world_size, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        infinite = InfiniteSampler(Range(10))  # rank, world size and a shared random seed from the group
        default = DefaultSampler(Range(10), seed=1)
        result = {"seed": infinite.seed, "rank": infinite.rank, "world": infinite.world_size,
                  "infinite": take(infinite, 5), "default": list(default)}
        torch.save(result, f"{out_dir}/{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_samplers_under_a_real_process_group(tmp_path):
    torch.multiprocessing.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)),
                                nprocs=2)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    assert results[0]["seed"] == results[1]["seed"]
    stream = take(InfiniteSampler(Range(10), seed=results[0]["seed"], rank=0, world_size=1), 10)
    assert results[0]["infinite"] == stream[0::2] and results[1]["infinite"] == stream[1::2]
    assert sorted(results[0]["default"] + results[1]["default"]) == list(range(10))


AUGMENTED = {**SYNTHETIC, "pipeline": [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"},
                                       {"type": "RandomFlip", "prob": 0.5}, {"type": "PhotoMetricDistortion"},
                                       {"type": "PackSegInputs"}]}
TRAIN = {"batch_size": 2, "num_workers": 0, "sampler": {"type": "InfiniteSampler", "shuffle": True},
         "dataset": AUGMENTED}


def flat(batches):
    return [x for batch in batches for x in batch["inputs"]]


def test_train_stream_resumes_with_the_same_augmentations():
    loader, dataset = build_train_stream(TRAIN, seed=3)
    assert dataset.metainfo["classes"][0] == "background"
    stream = iter(loader)
    np.random.seed(0)
    numpy_state = np.random.get_state()[1].copy()
    batches = [next(stream) for _ in range(5)]
    # The caller's generator is untouched by the per-sample seeding.
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    resumed, _ = build_train_stream(TRAIN, seed=3, start=2 * 2)  # two iterations of batch size 2 done
    again = list(itertools.islice(iter(resumed), 3))
    assert all(torch.equal(a, b) for a, b in zip(flat(batches[2:]), flat(again), strict=True))
    # Position seeding: the same sample index at two stream positions is augmented differently.
    assert len({tuple(x.flatten()[:50].tolist()) for x in flat(batches)}) == 10
    assert loader.state_dict()["consumed"] == 10


def test_train_stream_does_not_depend_on_workers():
    serial, _ = build_train_stream(TRAIN, seed=8, start=1)
    parallel, _ = build_train_stream({**TRAIN, "num_workers": 2}, seed=8, start=1)
    a = flat(itertools.islice(iter(serial), 3))
    b = flat(itertools.islice(iter(parallel), 3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="InfiniteSampler"):
        build_train_stream({**TRAIN, "sampler": {"type": "DefaultSampler"}})


def test_position_sampler_counts_global_positions():
    sampler = InfiniteSampler(Range(5), seed=2, rank=1, world_size=2)
    pairs = take(PositionSampler(sampler), 3)
    stream = take(InfiniteSampler(Range(5), seed=2, rank=0, world_size=1), 10)
    assert pairs == [(1, stream[1]), (3, stream[3]), (5, stream[5])]
    sampler.advance(4)
    assert [p for p, _ in take(PositionSampler(sampler), 2)] == [5, 7]


def test_shuffle_override():
    cfg = {"batch_size": 1, "sampler": {"type": "DefaultSampler", "shuffle": True}, "dataset": Range(6)}
    assert [b["idx"][0] for b in build_dataloader(cfg, seed=0, shuffle=False)] == list(range(6))
    assert [b["idx"][0] for b in build_dataloader(cfg, seed=0)] != list(range(6))
