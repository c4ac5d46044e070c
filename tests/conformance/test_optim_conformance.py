"""Optimizer param groups and lr schedules vs mmengine (MMSegmentation 1.2.2's runner): same values."""

from __future__ import annotations

import copy

import pytest
import torch
from oracle import require_oracle
from torch import nn

from semseg.build import build
from semseg.engine.optim import build_optim_wrapper
from semseg.engine.schedulers import build_schedulers

BN = dict(type="BN", requires_grad=True)


def small_segmentor() -> nn.Module:
    """A real semseg model: ResNetV1c-18 + PSPHead + FCN auxiliary head (BN), with a frozen stem conv."""
    model = build("segmentor", dict(
        type="EncoderDecoder",
        backbone=dict(type="ResNetV1c", depth=18, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                      strides=(1, 2, 1, 1), norm_cfg=BN, norm_eval=False, style="pytorch", contract_dilation=True),
        decode_head=dict(type="PSPHead", in_channels=512, in_index=3, channels=16, pool_scales=(1, 2, 3, 6),
                         dropout_ratio=0.1, num_classes=5, norm_cfg=BN, align_corners=False),
        auxiliary_head=dict(type="FCNHead", in_channels=256, in_index=2, channels=8, num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=5, norm_cfg=BN, align_corners=False)))
    model.backbone.stem[0].weight.requires_grad_(False)
    return model


class Mixed(nn.Module):
    """Every kind of layer the param-wise rules look at: GN, LN, IN, SyncBN, depthwise conv, flat params."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 8, 2, 2))
        self.cls_token = nn.Parameter(torch.zeros(1, 8))
        self.pos_block = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GroupNorm(2, 8), nn.InstanceNorm2d(8, affine=True))
            for _ in range(2))
        self.norm1 = nn.SyncBatchNorm(8)
        self.decode_head = nn.Module()
        self.decode_head.conv_seg = nn.Conv2d(8, 4, 1)
        self.decode_head.gamma = nn.Parameter(torch.ones(4))
        self.aux = nn.Module()
        self.aux.shared = self.decode_head  # reached twice: needs bypass_duplicate


SGD = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005)
ADAMW = dict(type="AdamW", lr=6e-05, betas=(0.9, 0.999), weight_decay=0.01)

OPTIM_CASES = {
    # The configs' own paramwise_cfg values (pspnet/deeplab '...head lr_mult=10', twins, swin, segformer-like).
    "no_paramwise": (small_segmentor, dict(type="OptimWrapper", optimizer=SGD, clip_grad=None)),
    "head_lr10_norm_decay0": (small_segmentor, dict(
        type="OptimWrapper", optimizer=SGD,
        paramwise_cfg=dict(custom_keys={"head": dict(lr_mult=10.0)}, norm_decay_mult=0.0))),
    "bias_rules": (small_segmentor, dict(
        type="OptimWrapper", optimizer=SGD,
        paramwise_cfg=dict(bias_lr_mult=2.0, bias_decay_mult=0.0, custom_keys={"auxiliary_head.conv_seg": {}}))),
    "twins": (Mixed, dict(
        type="OptimWrapper", optimizer=ADAMW,
        paramwise_cfg=dict(custom_keys={"pos_block": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0),
                                        "head": dict(lr_mult=10.0)}, bypass_duplicate=True))),
    "swin": (Mixed, dict(
        type="OptimWrapper", optimizer=ADAMW, clip_grad=dict(max_norm=1, norm_type=2),
        paramwise_cfg=dict(custom_keys={"absolute_pos_embed": dict(decay_mult=0.0),
                                        "relative_position_bias_table": dict(decay_mult=0.0),
                                        "norm": dict(decay_mult=0.0)}, bypass_duplicate=True))),
    "all_rules": (Mixed, dict(
        type="OptimWrapper", optimizer=SGD, accumulative_counts=2,
        paramwise_cfg=dict(norm_decay_mult=0.1, bias_decay_mult=0.2, dwconv_decay_mult=0.3, flat_decay_mult=0.4,
                           bias_lr_mult=5.0, custom_keys={"cls": dict(lr_mult=0.5), "cls_token": dict(lr_mult=0.0),
                                                          "blocks.1": dict(decay_mult=2.0)},
                           bypass_duplicate=True))),
}


def describe(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, dict]]:
    """Each group as (parameter names, its settings without the tensors), in order."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return [(",".join(names[id(p)] for p in g["params"]), {k: v for k, v in g.items() if k != "params"})
            for g in optimizer.param_groups]


@pytest.mark.parametrize("case", list(OPTIM_CASES))
def test_param_groups_match_mmengine(case):
    require_oracle()
    from mmengine.optim import build_optim_wrapper as oracle_build

    make_model, cfg = OPTIM_CASES[case]
    torch.manual_seed(0)
    model = make_model()
    ours = build_optim_wrapper(model, cfg)
    theirs = oracle_build(model, copy.deepcopy(cfg))
    assert type(ours.optimizer) is type(theirs.optimizer)
    assert describe(model, ours.optimizer) == describe(model, theirs.optimizer)
    assert ours.get_lr() == theirs.get_lr()
    assert ours.accumulative_counts == theirs._accumulative_counts


def test_update_params_matches_mmengine_with_accumulation_and_clipping():
    """Same weights after a few iterations: accumulation (last window shorter) and norm clipping."""
    require_oracle()
    from mmengine.optim import build_optim_wrapper as oracle_build

    cfg = dict(type="OptimWrapper", optimizer=SGD, accumulative_counts=3, clip_grad=dict(max_norm=0.05, norm_type=2),
               paramwise_cfg=dict(custom_keys={"1": dict(lr_mult=10.0)}, bias_decay_mult=0.0))
    torch.manual_seed(0)
    model_a = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    model_b = copy.deepcopy(model_a)
    ours, theirs = build_optim_wrapper(model_a, cfg), oracle_build(model_b, copy.deepcopy(cfg))
    ours.initialize_count_status(0, 7)
    theirs.initialize_count_status(model_b, 0, 7)
    gen = torch.Generator().manual_seed(1)
    for _ in range(7):
        x, y = torch.randn(4, 6, generator=gen), torch.randn(4, 2, generator=gen)
        ours.update_params(nn.functional.mse_loss(model_a(x), y))
        theirs.update_params(nn.functional.mse_loss(model_b(x), y))
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)


# ---- schedulers ---------------------------------------------------------------------------------------------
SCHEDULE_CASES = {
    "warmup50_then_poly": [
        dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=50),
        dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=50, end=200, by_epoch=False)],
    "warmup50_overlapping_poly": [
        dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=50),
        dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=200, by_epoch=False)],
    "poly_end_before_run_end": [dict(type="PolyLR", eta_min=0.0, power=1.0, begin=0, end=150, by_epoch=False)],
    "schedule_25k_like": [
        dict(type="LinearLR", start_factor=3e-2, begin=0, end=60, by_epoch=False),
        dict(type="PolyLRRatio", eta_min_ratio=3e-2, power=0.9, begin=60, end=180, by_epoch=False),
        dict(type="ConstantLR", by_epoch=False, factor=1, begin=180, end=200)],
    "knet_like": [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=20),
        dict(type="MultiStepLR", begin=20, end=200, milestones=[120, 150], by_epoch=False)],
    "constant_step_exp_cos": [
        dict(type="ConstantLR", factor=0.25, begin=5, end=40, by_epoch=False),
        dict(type="StepLR", step_size=30, gamma=0.5, begin=0, end=120, by_epoch=False),
        dict(type="ExponentialLR", gamma=0.99, begin=100, end=140, by_epoch=False),
        dict(type="CosineAnnealingLR", T_max=30, eta_min=1e-5, begin=140, end=200, by_epoch=False)],
    "cosine_ratio_past_tmax": [
        dict(type="CosineAnnealingLR", T_max=40, eta_min_ratio=0.1, begin=10, end=200, by_epoch=False)],
}


def oracle_schedulers(cfgs: list[dict], optim_wrapper) -> list:
    import mmseg.engine.schedulers  # noqa: F401  (registers PolyLRRatio)
    from mmseg.registry import PARAM_SCHEDULERS  # mmseg's, which falls back to mmengine's

    return [PARAM_SCHEDULERS.build(dict(cfg, optimizer=optim_wrapper)) for cfg in copy.deepcopy(cfgs)]


@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_lr_every_iteration_matches_mmengine(case):
    require_oracle()
    from mmengine.optim import build_optim_wrapper as oracle_build

    cfg = dict(type="OptimWrapper", optimizer=SGD, paramwise_cfg=dict(custom_keys={"head": dict(lr_mult=10.0)}))
    model = small_segmentor()
    ours, theirs = build_optim_wrapper(model, cfg), oracle_build(model, copy.deepcopy(cfg))
    our_scheds = build_schedulers(SCHEDULE_CASES[case], ours, max_iters=200)
    their_scheds = oracle_schedulers(SCHEDULE_CASES[case], theirs)
    seen = set()
    for it in range(200):
        # The lrs used at this iteration, base pseudo group included (its 'lr' is what the logs show).
        ours_lr = [g["lr"] for g in ours.param_groups]
        theirs_lr = [g["lr"] for g in theirs.param_groups]
        assert len(ours_lr) == len(theirs_lr)
        assert max(abs(a - b) for a, b in zip(ours_lr, theirs_lr, strict=True)) < 1e-10, it
        seen.add(theirs_lr[0])
        our_scheds.step()
        for scheduler in their_scheds:
            scheduler.step()
    assert len(seen) > 20  # the schedule moved the lr (a constant lr would prove nothing)


ZOO_OPTIM_CASES = {
    # the configs' own optim_wrapper (AdamW, paramwise custom_keys) on their models at a tiny width
    "vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512": {
        "model.backbone.embed_dims": 32, "model.backbone.num_layers": 4, "model.backbone.num_heads": 2,
        "model.backbone.out_indices": (0, 1, 2, 3), "model.neck.in_channels": [32] * 4,
        "model.neck.out_channels": 32, "model.decode_head.in_channels": [32] * 4, "model.decode_head.channels": 16,
        "model.auxiliary_head.in_channels": 32, "model.auxiliary_head.channels": 16},
    "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512": {
        "model.backbone.embed_dims": 16, "model.backbone.depths": (2, 2, 2, 2),
        "model.backbone.num_heads": (1, 2, 2, 4), "model.decode_head.in_channels": [16, 32, 64, 128],
        "model.decode_head.channels": 16, "model.auxiliary_head.in_channels": 64,
        "model.auxiliary_head.channels": 16},
}


@pytest.mark.parametrize("name", list(ZOO_OPTIM_CASES))
def test_zoo_config_param_groups_match_mmengine(name: str) -> None:
    require_oracle()
    from mmengine.optim import build_optim_wrapper as oracle_build

    from semseg.config import load_config

    cfg = load_config(name, {**ZOO_OPTIM_CASES[name], "model.pretrained": None, "model.backbone.init_cfg": None})
    assert cfg.optim_wrapper.get("paramwise_cfg")  # the config's custom_keys are what is compared
    model = build("segmentor", cfg.model.to_dict())
    ours = build_optim_wrapper(model, cfg.optim_wrapper.to_dict())
    theirs = oracle_build(model, copy.deepcopy(cfg.optim_wrapper.to_dict()))
    assert describe(model, ours.optimizer) == describe(model, theirs.optimizer)
    decayed = {group["weight_decay"] for group in ours.optimizer.param_groups}
    assert decayed == {0.0, 0.01}  # some parameters matched a decay_mult=0 key
