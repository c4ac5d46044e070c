"""EMAHead: E/M steps vs a naive reference, the running bases in eval / training / across processes."""

from __future__ import annotations

import math

import pytest
import torch

from semseg.build import build
from semseg.models.heads.ema import EMAHead, EMAModule, em_step

IN_CHANNELS, EMA_CHANNELS, NUM_BASES = 6, 5, 4


def head_cfg(**kwargs) -> dict:
    cfg = dict(type="EMAHead", in_channels=IN_CHANNELS, in_index=0, channels=4, ema_channels=EMA_CHANNELS,
               num_bases=NUM_BASES, num_stages=2, momentum=0.1, num_classes=3, norm_cfg=dict(type="BN"))
    cfg.update(kwargs)
    return cfg


def make_feats(seed: int, batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, IN_CHANNELS, 7, 9, generator=torch.Generator().manual_seed(seed))]


def naive_em_step(feats: torch.Tensor, bases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """feats (N, C, L), bases (N, C, K): the E/M formulas of EMANet written out with loops, in float64."""
    n_batch, channels, length = feats.shape
    k_bases = bases.shape[2]
    feats, bases = feats.double(), bases.double()
    new_bases = torch.zeros(n_batch, channels, k_bases, dtype=torch.float64)
    attention = torch.zeros(n_batch, length, k_bases, dtype=torch.float64)
    for n in range(n_batch):
        for pixel in range(length):
            scores = [sum(feats[n, c, pixel] * bases[n, c, k] for c in range(channels)) for k in range(k_bases)]
            exps = [math.exp(s) for s in scores]
            for k in range(k_bases):
                attention[n, pixel, k] = exps[k] / sum(exps)
        for k in range(k_bases):
            total = sum(attention[n, pixel, k] for pixel in range(length))
            mu = sum(feats[n, :, pixel] * attention[n, pixel, k] / total for pixel in range(length))
            new_bases[n, :, k] = mu / math.sqrt(sum(v * v for v in mu))
    return new_bases, attention


def test_em_step_matches_naive() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 11, generator=gen)
    bases = torch.nn.functional.normalize(torch.randn(2, 3, 4, generator=gen), dim=1)
    expected_bases, expected_attention = naive_em_step(feats, bases)
    got_bases, got_attention = em_step(feats, bases)
    assert torch.allclose(got_attention.double(), expected_attention, atol=1e-6)
    assert torch.allclose(got_bases.double(), expected_bases, atol=1e-6)


def test_module_reconstructs_from_the_last_step() -> None:
    module = EMAModule(channels=3, num_bases=4, num_stages=3, momentum=0.1).eval()
    feats = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    bases = module.bases.expand(2, -1, -1).double()
    for _ in range(3):
        bases, attention = naive_em_step(feats.flatten(2), bases)
    expected = torch.einsum("nck,nlk->ncl", bases, attention).view(2, 3, 5, 7)
    assert torch.allclose(module(feats).double(), expected, atol=1e-6)


def test_bases_buffer_init() -> None:
    module = EMAModule(channels=8, num_bases=16, num_stages=1, momentum=0.1)
    assert module.bases.shape == (1, 8, 16)
    assert "bases" in dict(module.named_buffers()) and not list(module.parameters())
    assert torch.allclose(module.bases.norm(dim=1), torch.ones(1, 16), atol=1e-6)
    with pytest.raises(ValueError, match="num_stages"):
        EMAModule(channels=8, num_bases=16, num_stages=0, momentum=0.1)


@pytest.mark.parametrize("concat_input", [True, False])
def test_keys_and_logits_in_both_modes(concat_input: bool) -> None:
    head = build("head", head_cfg(concat_input=concat_input))
    assert isinstance(head, EMAHead)
    keys = set(head.state_dict())
    assert "ema_module.bases" in keys and "ema_mid_conv.conv.bias" in keys
    assert "ema_mid_conv.bn.weight" not in keys and "ema_out_conv.bn.weight" in keys
    assert ("conv_cat.conv.weight" in keys) == concat_input
    feats = make_feats(0)
    for training in (True, False):
        out = head.train(training)(feats)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 7, 9)


def test_eval_keeps_bases() -> None:
    head = build("head", head_cfg()).eval()
    before = head.ema_module.bases.clone()
    head(make_feats(0))
    assert torch.equal(head.ema_module.bases, before)


def test_training_updates_bases_by_momentum() -> None:
    head = build("head", head_cfg(momentum=0.3)).train()
    feats = make_feats(0)
    before = head.ema_module.bases.clone()
    with torch.no_grad():
        mid = head.ema_mid_conv(head.ema_in_conv(feats[0])).flatten(2)
    bases = before.expand(2, -1, -1).double()
    for _ in range(2):
        bases, _ = naive_em_step(mid, bases)
    mean = bases.mean(dim=0, keepdim=True)
    expected = 0.7 * before.double() + 0.3 * mean / mean.norm(dim=1, keepdim=True)

    head(feats)
    after = head.ema_module.bases
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.allclose(after.double(), expected, atol=1e-6)
    assert not after.requires_grad


def test_momentum_one_gives_unit_bases() -> None:
    head = build("head", head_cfg(momentum=1.0)).train()
    before = head.ema_module.bases.clone()
    head(make_feats(3))
    after = head.ema_module.bases
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.allclose(after.norm(dim=1), torch.ones(1, NUM_BASES), atol=1e-6)


def test_gradients_skip_the_em_path() -> None:
    head = build("head", head_cfg()).train()
    head(make_feats(0)).square().mean().backward()
    assert all(not p.requires_grad and p.grad is None for p in head.ema_mid_conv.parameters())
    trained = [n for n, p in head.named_parameters() if p.requires_grad]
    assert all(head.get_parameter(n).grad is not None for n in trained)
    assert head.ema_in_conv.conv.weight.grad.abs().sum() > 0


def _distributed_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same initial weights and bases on both ranks
        head = build("head", head_cfg(momentum=0.3)).train()
        before = head.ema_module.bases.clone()
        feats = make_feats(10 + rank)
        with torch.no_grad():
            mid = head.ema_mid_conv(head.ema_in_conv(feats[0]))
        head(feats)
        torch.save({"before": before, "after": head.ema_module.bases.clone(), "mid": mid},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_bases_update_averages_ranks(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    before = states[0]["before"]
    assert torch.equal(states[1]["before"], before)
    assert torch.equal(states[0]["after"], states[1]["after"])

    batch_means = []
    for state in states:
        bases = before.expand(2, -1, -1).double()
        for _ in range(2):
            bases, _ = naive_em_step(state["mid"].flatten(2), bases)
        batch_means.append(bases.mean(dim=0, keepdim=True))
    mean = (batch_means[0] + batch_means[1]) / 2
    expected = 0.7 * before.double() + 0.3 * mean / mean.norm(dim=1, keepdim=True)
    assert torch.allclose(states[0]["after"].double(), expected, atol=1e-6)
    # A rank's own batch mean alone would give other bases: the reduction mattered.
    alone = 0.7 * before.double() + 0.3 * batch_means[0] / batch_means[0].norm(dim=1, keepdim=True)
    assert not torch.allclose(states[0]["after"].double(), alone, atol=1e-4)
