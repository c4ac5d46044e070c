"""Optimizer wrappers (param-wise groups, accumulation, clipping, AMP) and lr schedulers (values, resume)."""

from __future__ import annotations

import copy
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from semseg.engine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper, fast_step_arguments
from semseg.engine.schedulers import build_schedulers

SGD = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4)


class TinySegmentor(nn.Module):
    """Names as in a segmentor: backbone conv + BN + depthwise conv, a head with conv_seg, a top-level param."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, groups=4))
        self.decode_head = nn.Module()
        self.decode_head.conv_seg = nn.Conv2d(4, 2, 1)
        self.decode_head.norm = nn.LayerNorm(2)
        self.scale = nn.Parameter(torch.ones(1))


def groups_by_name(model: nn.Module, wrapper: OptimWrapper) -> dict[str, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(g["params"][0])]: g for g in wrapper.optimizer.param_groups}


def test_no_paramwise_cfg_is_one_group_with_the_config_values():
    model = TinySegmentor()
    wrapper = build_optim_wrapper(model, dict(type="OptimWrapper", optimizer=SGD))
    assert isinstance(wrapper.optimizer, torch.optim.SGD)
    assert len(wrapper.optimizer.param_groups) == 1
    group = wrapper.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 5e-4)
    assert wrapper.get_lr() == {"lr": [0.01]}
    assert wrapper.param_groups == wrapper.optimizer.param_groups  # no base pseudo group


def test_custom_keys_entries_without_effect_are_reported(caplog):
    cfg = dict(type="OptimWrapper", optimizer=SGD, paramwise_cfg=dict(custom_keys={"head": dict(wd_mult=0.0)}))
    with caplog.at_level(logging.WARNING, logger="semseg.engine.optim"):
        wrapper = build_optim_wrapper(TinySegmentor(), cfg)
    assert "custom_keys['head'] sets wd_mult, which has no effect" in caplog.text
    assert all(group["weight_decay"] == SGD["weight_decay"] for group in wrapper.optimizer.param_groups)


def test_custom_keys_and_norm_decay():
    model = TinySegmentor()
    model.backbone[0].bias.requires_grad_(False)
    cfg = dict(type="OptimWrapper", optimizer=SGD,
               paramwise_cfg=dict(custom_keys={"head": dict(lr_mult=10.0), "decode_head.conv_seg": dict(decay_mult=0.5)},
                                  norm_decay_mult=0.0, bias_lr_mult=2.0, dwconv_decay_mult=0.1))
    wrapper = build_optim_wrapper(model, cfg)
    groups = groups_by_name(model, wrapper)
    assert "backbone.0.bias" not in groups  # frozen
    assert list(groups) == ["scale", "backbone.0.weight", "backbone.1.weight", "backbone.1.bias",
                            "backbone.2.weight", "backbone.2.bias", "decode_head.conv_seg.weight",
                            "decode_head.conv_seg.bias", "decode_head.norm.weight", "decode_head.norm.bias"]
    # The longest matching key wins, and only its multipliers apply (lr_mult of 'head' is not combined).
    seg_w = groups["decode_head.conv_seg.weight"]
    assert seg_w["lr"] == 0.01 and seg_w["weight_decay"] == pytest.approx(2.5e-4) and seg_w["decay_mult"] == 0.5
    head_norm = groups["decode_head.norm.weight"]  # 'head' key: no norm_decay_mult
    assert head_norm["lr"] == pytest.approx(0.1) and head_norm["weight_decay"] == 5e-4
    assert head_norm["lr_mult"] == 10.0
    assert groups["backbone.1.weight"]["weight_decay"] == 0.0  # BN
    assert groups["backbone.1.bias"]["lr"] == 0.01  # a norm bias keeps the default lr
    assert groups["backbone.2.bias"]["lr"] == pytest.approx(0.02)  # bias_lr_mult
    assert groups["backbone.2.weight"]["weight_decay"] == pytest.approx(5e-5)  # depthwise conv
    assert groups["backbone.2.bias"]["weight_decay"] == pytest.approx(5e-5)
    assert groups["backbone.0.weight"]["weight_decay"] == 5e-4  # no rule: the optimizer's default
    assert wrapper.get_lr()["base_lr"] == [0.01]
    assert len(wrapper.param_groups) == len(wrapper.optimizer.param_groups) + 1


def test_top_level_param_name_and_flat_and_bias_decay():
    model = TinySegmentor()
    cfg = dict(optimizer=SGD, paramwise_cfg=dict(custom_keys={".scale": dict(lr_mult=0.0)}, bias_decay_mult=0.0,
                                                 flat_decay_mult=0.3))
    groups = groups_by_name(model, build_optim_wrapper(model, cfg))
    assert groups["scale"]["lr"] == 0.0  # a top-level parameter is named '.scale' for custom_keys
    assert groups["backbone.0.bias"]["weight_decay"] == 0.0  # bias rule comes before flat rule
    assert groups["backbone.1.weight"]["weight_decay"] == pytest.approx(1.5e-4)  # 1-d, no norm rule given


def test_shared_module_needs_bypass_duplicate():
    model = TinySegmentor()
    model.neck = nn.Module()
    model.neck.shared = model.decode_head  # the same module under two parents
    with pytest.raises(ValueError, match="more than one"):
        build_optim_wrapper(model, dict(optimizer=SGD, paramwise_cfg=dict(norm_decay_mult=0.0)))
    wrapper = build_optim_wrapper(model, dict(optimizer=SGD, paramwise_cfg=dict(norm_decay_mult=0.0,
                                                                               bypass_duplicate=True)))
    assert len(wrapper.optimizer.param_groups) == len(list(model.parameters()))


def test_config_errors():
    model = TinySegmentor()
    with pytest.raises(KeyError, match="did you mean 'SGD'"):
        build_optim_wrapper(model, dict(optimizer=dict(type="SDG", lr=0.1)))
    with pytest.raises(ValueError, match="weight_decay"):
        build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=0.1),
                                        paramwise_cfg=dict(custom_keys={"head": dict(decay_mult=0.0)})))
    with pytest.raises(KeyError, match="norm_decay"):
        build_optim_wrapper(model, dict(optimizer=SGD, paramwise_cfg=dict(norm_decay=0.0)))
    with pytest.raises(NotImplementedError, match="'MyConstructor' is not supported"):
        build_optim_wrapper(model, dict(optimizer=SGD, constructor="MyConstructor"))


def linear_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(5, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 5, generator=gen))
        model.bias.copy_(torch.randn(3, generator=gen))
    x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)
    return model, x, y


def test_accumulation_equals_one_big_batch():
    model_a, x, y = linear_problem()
    model_b = copy.deepcopy(model_a)
    big = build_optim_wrapper(model_a, dict(optimizer=SGD))
    acc = build_optim_wrapper(model_b, dict(optimizer=SGD, accumulative_counts=4))
    for _ in range(3):
        big.update_params(nn.functional.mse_loss(model_a(x), y))
        for i in range(4):
            acc.update_params(nn.functional.mse_loss(model_b(x[2 * i:2 * i + 2]), y[2 * i:2 * i + 2]))
    torch.testing.assert_close(model_b.weight, model_a.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model_b.bias, model_a.bias, rtol=1e-6, atol=1e-7)
    assert model_a.weight.grad is None or model_a.weight.grad.abs().sum() == 0


def test_accumulation_last_window_divides_by_remainder():
    model, x, y = linear_problem()
    wrapper = build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=0.1), accumulative_counts=4))
    wrapper.initialize_count_status(0, max_counts=6)  # windows of 4 then 2
    factors = []
    for _ in range(6):
        factors.append(float(wrapper.scale_loss(torch.tensor(1.0))))
        stepped_before = model.weight.clone()
        wrapper.update_params(nn.functional.mse_loss(model(x), y))
        factors[-1] = (factors[-1], not torch.equal(stepped_before, model.weight))
    assert factors == [(0.25, False), (0.25, False), (0.25, False), (0.25, True), (0.5, False), (0.5, True)]


def test_clip_grad_norm():
    model, x, y = linear_problem()
    start = [p.detach().clone() for p in model.parameters()]
    wrapper = build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=1.0), clip_grad=dict(max_norm=0.1)))
    loss = 100 * nn.functional.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    wrapper.update_params(loss)
    moved = torch.cat([(s - p.detach()).flatten() for s, p in zip(start, model.parameters(), strict=True)])
    assert wrapper.last_grad_norm == pytest.approx(float(total))
    assert float(total) > 0.1
    assert float(torch.linalg.vector_norm(moved)) == pytest.approx(0.1, rel=1e-4)



# -- fused / foreach optimizer steps ------------------------------------------------------------------------
def two_steps(optimizer: dict, fused_optimizer: bool) -> tuple[torch.Tensor, OptimWrapper]:
    """The flattened weights of TinySegmentor after two steps on fixed batches (BN in train mode)."""
    torch.manual_seed(0)
    model = TinySegmentor()
    wrapper = build_optim_wrapper(model, dict(optimizer=optimizer), fused_optimizer=fused_optimizer)
    for step in range(2):
        x = torch.randn(2, 3, 13, 17, generator=torch.Generator().manual_seed(step))
        out = model.decode_head.conv_seg(model.backbone(x)).permute(0, 2, 3, 1)
        wrapper.update_params((model.decode_head.norm(out) * model.scale).square().mean())
    return torch.cat([p.detach().flatten() for p in model.parameters()]), wrapper


@pytest.mark.parametrize("optimizer", [SGD, dict(type="AdamW", lr=0.01, weight_decay=0.01)], ids=["SGD", "AdamW"])
def test_fast_step_on_cpu_is_foreach_and_gives_the_plain_step_weights_exactly(optimizer):
    plain, plain_wrapper = two_steps(optimizer, fused_optimizer=False)
    fast, fast_wrapper = two_steps(optimizer, fused_optimizer=True)
    assert plain_wrapper.optimizer.param_groups[0]["foreach"] is None
    assert fast_wrapper.optimizer.param_groups[0]["foreach"] is True
    assert not torch.equal(plain, torch.cat([p.detach().flatten() for p in TinySegmentor().parameters()]))
    assert torch.equal(fast, plain)


def test_foreach_and_fused_sgd_steps_give_the_plain_step_weights():
    """The config's choice wins over fused_optimizer's; fused (CUDA's kernel, here on the CPU) is within
    1e-6 of the loop (its BN bias steps differ by ~2e-10: not bit for bit, so CPUs use foreach)."""
    plain, _ = two_steps(SGD, fused_optimizer=False)
    for implementation in ("foreach", "fused"):
        fast, wrapper = two_steps({**SGD, implementation: True}, fused_optimizer=True)
        group = wrapper.optimizer.param_groups[0]
        assert group[implementation] is True and not group["fused" if implementation == "foreach" else "foreach"]
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)


def test_fast_step_arguments_by_optimizer_and_device_and_the_config_s_choice():
    cpu = [torch.zeros(2)]
    cuda = [SimpleNamespace(device=torch.device("cuda"), is_floating_point=lambda: True)]
    assert fast_step_arguments(SGD, cpu) == {"foreach": True}
    assert fast_step_arguments(dict(type="AdamW", lr=1e-3), cpu) == {"foreach": True}
    assert fast_step_arguments(SGD, cuda) == {"fused": True}
    assert fast_step_arguments(dict(type="AdamW", lr=1e-3), cuda) == {"fused": True}
    assert fast_step_arguments(dict(type="RMSprop", lr=1e-3), cuda) == {"foreach": True}  # no fused kernel
    assert fast_step_arguments(SGD, [torch.zeros(2), *cuda]) == {"foreach": True}  # mixed devices
    assert fast_step_arguments({**SGD, "foreach": False}, cuda) == {}
    wrapper = build_optim_wrapper(TinySegmentor(), dict(optimizer={**SGD, "foreach": False}), fused_optimizer=True)
    assert wrapper.optimizer.param_groups[0]["foreach"] is False and not wrapper.optimizer.param_groups[0]["fused"]


def test_resuming_keeps_this_run_s_step_implementation():
    """A checkpoint written with fused steps resumes into a plain run as plain steps (and back)."""
    _, fast = two_steps({**SGD, "fused": True}, fused_optimizer=False)
    _, plain = two_steps(SGD, fused_optimizer=False)
    plain.load_state_dict(fast.state_dict())
    assert plain.optimizer.param_groups[0]["fused"] is None
    fast.load_state_dict(plain.state_dict())
    assert fast.optimizer.param_groups[0]["fused"] is True
    assert all(torch.equal(a["momentum_buffer"], b["momentum_buffer"])
               for a, b in zip(fast.optimizer.state.values(), plain.optimizer.state.values(), strict=True))


def test_clip_grad_value_and_bad_clip():
    model, x, y = linear_problem()
    start = model.weight.detach().clone()
    wrapper = build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=1.0),
                                              clip_grad=dict(type="value", clip_value=1e-3)))
    wrapper.update_params(100 * nn.functional.mse_loss(model(x), y))
    assert float((start - model.weight.detach()).abs().max()) == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(ValueError, match="clip_grad"):
        build_optim_wrapper(model, dict(optimizer=SGD, clip_grad=dict(type="norm")))


def test_amp_bfloat16_on_cpu_runs_without_scaler():
    model, x, y = linear_problem()
    start = model.weight.detach().clone()
    wrapper = build_optim_wrapper(model, dict(type="AmpOptimWrapper", dtype="bfloat16",
                                              optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.01)))
    assert isinstance(wrapper, AmpOptimWrapper) and wrapper.loss_scaler is None
    with wrapper.optim_context(model):
        out = model(x)
    assert out.dtype == torch.bfloat16
    wrapper.update_params(nn.functional.mse_loss(out.float(), y))
    assert not torch.equal(model.weight, start)
    assert "loss_scaler" not in wrapper.state_dict()


def test_amp_float16_loss_scale_fixed_and_dynamic_state():
    model, x, y = linear_problem()
    fixed = build_optim_wrapper(model, dict(type="AmpOptimWrapper", dtype="float16", loss_scale=512.0,
                                            optimizer=dict(type="SGD", lr=0.1)))
    for _ in range(2):
        with fixed.optim_context(model):
            out = model(x)
        assert out.dtype == torch.float16
        fixed.update_params(nn.functional.mse_loss(out.float(), y))
    assert fixed.loss_scaler.get_scale() == 512.0
    assert fixed.state_dict()["loss_scaler"]["scale"] == 512.0

    model2, _, _ = linear_problem()
    dynamic = build_optim_wrapper(model2, dict(type="AmpOptimWrapper", dtype="float16", optimizer=dict(type="SGD", lr=0.1)))
    state = dynamic.state_dict()
    state["loss_scaler"]["scale"] = 1024.0
    dynamic.load_state_dict(state)
    assert dynamic.loss_scaler.get_scale() == 1024.0
    with pytest.raises(TypeError, match="loss_scale"):
        AmpOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), loss_scale="static", dtype="float16")


def test_optimizer_state_round_trip_keeps_base_settings():
    model = TinySegmentor()
    cfg = dict(optimizer=SGD, paramwise_cfg=dict(custom_keys={"head": dict(lr_mult=10.0)}))
    wrapper = build_optim_wrapper(model, cfg)
    build_schedulers(dict(type="LinearLR", start_factor=0.5, begin=0, end=10), wrapper)
    state = wrapper.state_dict()
    assert state["base_param_settings"]["lr"] == 0.005
    other = build_optim_wrapper(model, cfg)
    other.load_state_dict(state)
    assert other.get_lr() == wrapper.get_lr()


# ---- schedulers ---------------------------------------------------------------------------------------------
def lr_sequence(sched_cfg, iters: int, lr: float = 0.01, start: int = 0, state=None) -> list[float]:
    """The lr used at each iteration ``start .. iters-1`` (optionally resuming from ``state``)."""
    model = nn.Linear(2, 2)
    wrapper = build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=lr, momentum=0.9)))
    schedulers = build_schedulers(sched_cfg, wrapper, max_iters=iters)
    if state is not None:
        wrapper.load_state_dict(state[0])
        schedulers.load_state_dict(state[1])
    lrs = []
    for _ in range(start, iters):
        lrs.append(wrapper.get_lr()["lr"][0])
        wrapper.update_params(model(torch.ones(1, 2)).sum())
        schedulers.step()
    return lrs, (wrapper.state_dict(), schedulers.state_dict())


def test_poly_lr_closed_form():
    lrs, _ = lr_sequence([dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=100, by_epoch=False)], 120)
    t_max = 99
    for t in range(100):
        assert lrs[t] == pytest.approx((0.01 - 1e-4) * (1 - t / t_max) ** 0.9 + 1e-4, rel=1e-9)
    assert lrs[100:] == [pytest.approx(1e-4)] * 20  # stays at eta_min after the end


def test_warmup_then_poly_and_linear_values():
    cfg = [dict(type="LinearLR", start_factor=0.1, begin=0, end=11, by_epoch=False),
           dict(type="PolyLR", power=1.0, eta_min=0.0, begin=11, end=21, by_epoch=False)]
    lrs, _ = lr_sequence(cfg, 21)
    assert lrs[:11] == pytest.approx([0.01 * (0.1 + 0.09 * t) for t in range(11)])
    assert lrs[11:] == pytest.approx([0.01 * (1 - t / 9) for t in range(10)], abs=1e-12)


def test_constant_step_multistep_cosine():
    lrs, _ = lr_sequence([dict(type="ConstantLR", factor=0.5, begin=2, end=5)], 7)
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.01, 0.01, 0.01])
    lrs, _ = lr_sequence([dict(type="StepLR", step_size=2, gamma=0.5)], 5)
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])
    lrs, _ = lr_sequence([dict(type="MultiStepLR", milestones=[1, 3, 3], gamma=0.1, begin=1)], 6)
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001, 1e-5, 1e-5])  # milestones count from begin
    lrs, _ = lr_sequence([dict(type="CosineAnnealingLR", T_max=4, eta_min=0.0, begin=0, end=5)], 5)
    assert lrs == pytest.approx([0.005 * (1 + math.cos(math.pi * t / 4)) for t in range(5)], abs=1e-12)


def test_scheduler_resume_gives_the_same_sequence():
    cfg = [dict(type="LinearLR", start_factor=1e-3, begin=0, end=30),
           dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=80)]
    full, _ = lr_sequence(cfg, 80)
    first, state = lr_sequence(cfg, 37)
    rest, _ = lr_sequence(cfg, 80, start=37, state=copy.deepcopy(state))
    assert first + rest == full  # exactly, not approximately


def test_scheduler_config_errors():
    with pytest.raises(ValueError, match="by_epoch"):
        lr_sequence([dict(type="PolyLR", by_epoch=True)], 2)
    with pytest.raises(ValueError, match="larger than begin"):
        lr_sequence([dict(type="PolyLR", begin=5, end=5)], 2)
    with pytest.raises(KeyError, match="did you mean 'PolyLR'"):
        lr_sequence([dict(type="PolyLr")], 2)
    _, state = lr_sequence([dict(type="PolyLR", end=10)], 2)
    with pytest.raises(ValueError, match="changed"):
        lr_sequence([dict(type="PolyLR", end=10), dict(type="LinearLR", end=2)], 3, state=state)
