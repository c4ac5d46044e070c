"""ResNet backbones (V1b, V1c, V1d) with MMSegmentation's parameter names and options.

Variants (Bag of Tricks, He et al. 2019, sec. 4.1): ``ResNet`` (V1b) has a 7x7 stem conv (``conv1``,
``bn1``); ``ResNetV1c`` a deep stem of three 3x3 convs (``stem.0/1/3/4/6/7``, ReLUs at 2, 5, 8);
``ResNetV1d`` adds an average pool before the 1x1 conv of each downsampling shortcut
(``downsample.0`` pool, ``.1`` conv, ``.2`` norm). Segmentation models replace the strides of the last
stages by dilations (D8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.utils.checkpoint as cp
from torch import nn

from semseg.models.backbones.base import FreezableBackbone, check_pretrained, init_conv_norm
from semseg.nn import add_norms, build_conv, build_norm


class _ResBlock(nn.Module):
    """Shared part of the residual blocks: residual branch + shortcut, final ReLU, optional checkpointing."""

    norm_names: tuple[str, ...]
    zero_init_last = True  # zero_init_residual zeroes the last norm (MMSegmentation: ResNet's own blocks only)

    def __init__(self, downsample: nn.Module | None, with_cp: bool):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    def norm(self, i: int) -> nn.Module:
        """The norm after conv ``i`` (1-based)."""
        return getattr(self, self.norm_names[i - 1])

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def last_norm(self) -> nn.Module:
        """The norm closing the residual branch (``zero_init_residual`` zeroes it)."""
        return getattr(self, self.norm_names[-1])

    def _branches(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.residual(x) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and self.training and x.requires_grad:
            out = cp.checkpoint(self._branches, x, use_reentrant=False)
        else:
            out = self._branches(x)
        return self.relu(out)


class BasicBlock(_ResBlock):
    """Two 3x3 convs (ResNet-18/34). The stride and dilation sit on ``conv1``; ``style`` has no effect."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        with_cp: bool = False,
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN"),  # noqa: B006 - never mutated
    ):
        super().__init__(downsample, with_cp)
        self.conv1 = build_conv(conv_cfg, inplanes, planes, 3, stride=stride, padding=dilation,
                                dilation=dilation, bias=False)
        self.conv2 = build_conv(conv_cfg, planes, planes, 3, padding=1, bias=False)
        self.norm_names = add_norms(self, norm_cfg, (planes, planes))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm(1)(self.conv1(x)))
        return self.norm(2)(self.conv2(out))


class Bottleneck(_ResBlock):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152).

    ``style='pytorch'`` puts the stride on the 3x3 conv (V1.5), ``'caffe'`` on the first 1x1 conv.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        with_cp: bool = False,
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN"),  # noqa: B006 - never mutated
    ):
        super().__init__(downsample, with_cp)
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        stride1, stride2 = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1 = build_conv(conv_cfg, inplanes, planes, 1, stride=stride1, bias=False)
        self.conv2 = build_conv(conv_cfg, planes, planes, 3, stride=stride2, padding=dilation,
                                dilation=dilation, bias=False)
        self.conv3 = build_conv(conv_cfg, planes, planes * self.expansion, 1, bias=False)
        self.norm_names = add_norms(self, norm_cfg, (planes, planes, planes * self.expansion))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm(1)(self.conv1(x)))
        out = self.relu(self.norm(2)(self.conv2(out)))
        return self.norm(3)(self.conv3(out))


ARCH_SETTINGS: dict[int, tuple[type[_ResBlock], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def _block_dilations(num_blocks: int, dilation: int, multi_grid: Sequence[int] | None,
                     contract_dilation: bool) -> list[int]:
    """Dilation of each block of a stage.

    ``multi_grid`` (last stage only) gives the blocks' dilations outright, as in MMSegmentation (D16-MG124
    uses dilation 2 and multi_grid (1, 2, 4): the blocks get 1, 2, 4). Otherwise every block has the
    stage's dilation, but ``contract_dilation`` halves it in the first block.
    """
    if multi_grid is not None:
        if len(multi_grid) < num_blocks:
            raise ValueError(f"multi_grid {tuple(multi_grid)} has fewer entries than the last stage's "
                             f"{num_blocks} blocks")
        return list(multi_grid[:num_blocks])
    first = dilation // 2 if contract_dilation and dilation > 1 else dilation
    return [first] + [dilation] * (num_blocks - 1)


def init_res_backbone(module: nn.Module, zero_init_residual: bool) -> None:
    """Kaiming-normal convs (fan_out, ReLU), norms at weight 1 bias 0; with ``zero_init_residual`` also zero
    the last norm of each residual block that allows it (``zero_init_last``), so it starts as the identity."""
    init_conv_norm(module)
    if zero_init_residual:
        for m in module.modules():
            if isinstance(m, _ResBlock) and m.zero_init_last:
                last = m.last_norm()
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)


def _downsample(inplanes: int, outplanes: int, stride: int, avg_down: bool, conv_cfg: dict | None,
                norm_cfg: dict) -> nn.Sequential:
    """Shortcut projection: 1x1 conv + norm, or (V1d) avg-pool + stride-1 1x1 conv + norm."""
    if not avg_down:
        return nn.Sequential(build_conv(conv_cfg, inplanes, outplanes, 1, stride=stride, bias=False),
                             build_norm(norm_cfg, outplanes)[1])
    return nn.Sequential(
        nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False),
        build_conv(conv_cfg, inplanes, outplanes, 1, stride=1, bias=False),
        build_norm(norm_cfg, outplanes)[1],
    )


class ResNet(FreezableBackbone):
    """ResNet backbone (V1b: 7x7 stem conv); returns the features of the stages in ``out_indices``.

    Args (the config's keys, MMSegmentation's names and defaults):
        depth: 18, 34, 50, 101 or 152.
        in_channels: input image channels.
        stem_channels: channels after the stem.
        base_channels: planes of the first stage (stage i has ``base_channels * 2**i`` planes).
        num_stages: 1 to 4.
        strides, dilations: per stage, of the first block (stride) and of all blocks (dilation).
        out_indices: stages whose outputs ``forward`` returns.
        style: ``'pytorch'`` (stride on the 3x3 conv) or ``'caffe'`` (stride on the first 1x1 conv).
        deep_stem: three 3x3 convs instead of the 7x7 one (V1c, V1d).
        avg_down: average-pool in the downsampling shortcuts (V1d).
        frozen_stages: freeze the stem and stages 1..frozen_stages (no grad, norms in eval mode); -1: none.
        conv_cfg, norm_cfg: conv and norm layer configs (``norm_cfg`` type picks ``bn1`` / ``gn1`` keys).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training.
        dcn, stage_with_dcn, plugins: deformable convs and plugins are not supported (must stay unset).
        multi_grid: dilations of the blocks of the last stage, replacing its dilation.
        contract_dilation: halve the dilation of the first block of each dilated stage.
        with_cp: gradient checkpointing in each block during training (less memory, more compute).
        zero_init_residual: zero the last norm of each block, so each block starts as the identity.
        pretrained, init_cfg: where pretrained weights come from; stored, never downloaded here.

    Attributes:
        out_channels: channels of each returned feature map.
        out_strides: output stride (input size / feature size) of each returned feature map.
    """

    arch_settings: dict[int, tuple[type[_ResBlock], tuple[int, ...]]] = ARCH_SETTINGS

    def __init__(
        self,
        depth: int,
        in_channels: int = 3,
        stem_channels: int = 64,
        base_channels: int = 64,
        num_stages: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        out_indices: Sequence[int] = (0, 1, 2, 3),
        style: str = "pytorch",
        deep_stem: bool = False,
        avg_down: bool = False,
        frozen_stages: int = -1,
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN", requires_grad=True),  # noqa: B006 - never mutated
        norm_eval: bool = False,
        dcn: dict | None = None,
        stage_with_dcn: Sequence[bool] = (False, False, False, False),
        plugins: list[dict] | None = None,
        multi_grid: Sequence[int] | None = None,
        contract_dilation: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = True,
        pretrained: str | None = None,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        if depth not in self.arch_settings:
            raise KeyError(f"invalid depth {depth} for {type(self).__name__}; expected one of "
                           f"{sorted(self.arch_settings)}")
        if dcn is not None or plugins:
            raise NotImplementedError(f"{type(self).__name__} with dcn or plugins is not supported (they need mmcv ops)")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be 1 to 4, got {num_stages}")
        if not len(strides) == len(dilations) == num_stages:
            raise ValueError(f"strides {tuple(strides)} and dilations {tuple(dilations)} need one entry "
                             f"per stage ({num_stages})")
        out_indices = tuple(out_indices)
        if not out_indices or max(out_indices) >= num_stages:
            raise ValueError(f"out_indices {out_indices} must pick stages among 0..{num_stages - 1}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        check_pretrained(pretrained, init_cfg)

        self.depth = depth
        self.base_channels = base_channels
        self.pretrained = pretrained
        self.init_cfg = init_cfg
        self.out_indices = out_indices
        self.deep_stem = deep_stem
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.stage_with_dcn = stage_with_dcn
        block, stage_blocks = self.arch_settings[depth]
        self._make_stem(in_channels, stem_channels, conv_cfg, norm_cfg)

        self.res_layers: list[str] = []
        all_channels, all_strides = [], []
        inplanes, total_stride = stem_channels, 4
        for i in range(num_stages):
            planes = base_channels * 2**i
            dils = _block_dilations(stage_blocks[i], dilations[i],
                                    multi_grid if i == num_stages - 1 else None, contract_dilation)
            layer = self.make_res_layer(block, inplanes, planes, dils, strides[i], avg_down, conv_cfg, norm_cfg,
                                        style=style, with_cp=with_cp)
            self.add_module(f"layer{i + 1}", layer)
            self.res_layers.append(f"layer{i + 1}")
            inplanes = planes * block.expansion
            total_stride *= strides[i]
            all_channels.append(inplanes)
            all_strides.append(total_stride)
        self.out_channels = [all_channels[i] for i in out_indices]
        self.out_strides = [all_strides[i] for i in out_indices]

        init_res_backbone(self, zero_init_residual)
        self._freeze_stages()

    def _make_stem(self, in_channels: int, stem_channels: int, conv_cfg: dict | None, norm_cfg: dict) -> None:
        """V1b: ``conv1`` 7x7/2 + ``bn1`` + ``relu``; deep stem: ``stem`` (three 3x3 convs, the first /2)."""
        if self.deep_stem:
            # Keys stem.0/1 (conv, norm), stem.3/4, stem.6/7; the ReLUs hold positions 2, 5, 8.
            half = stem_channels // 2
            self.stem = nn.Sequential(
                build_conv(conv_cfg, in_channels, half, 3, stride=2, padding=1, bias=False),
                build_norm(norm_cfg, half)[1],
                nn.ReLU(inplace=True),
                build_conv(conv_cfg, half, half, 3, stride=1, padding=1, bias=False),
                build_norm(norm_cfg, half)[1],
                nn.ReLU(inplace=True),
                build_conv(conv_cfg, half, stem_channels, 3, stride=1, padding=1, bias=False),
                build_norm(norm_cfg, stem_channels)[1],
                nn.ReLU(inplace=True),
            )
        else:
            self.conv1 = build_conv(conv_cfg, in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
            (self.stem_norm_name,) = add_norms(self, norm_cfg, (stem_channels,))
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def make_res_layer(self, block: type[_ResBlock], inplanes: int, planes: int, dilations: Sequence[int],
                       stride: int, avg_down: bool, conv_cfg: dict | None, norm_cfg: dict,
                       **block_kwargs) -> nn.Sequential:
        """One stage: ``len(dilations)`` blocks, the first with ``stride`` and the shortcut projection.

        ``block_kwargs`` (``style``, ``with_cp``, and a subclass's own block options) go to every block.
        Subclasses with other blocks (ResNeSt) override this to add their options.
        """
        outplanes = planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != outplanes:
            downsample = _downsample(inplanes, outplanes, stride, avg_down, conv_cfg, norm_cfg)
        blocks = [block(inplanes, planes, stride=stride, dilation=dilations[0], downsample=downsample,
                        conv_cfg=conv_cfg, norm_cfg=norm_cfg, **block_kwargs)]
        blocks += [block(outplanes, planes, stride=1, dilation=dilation, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         **block_kwargs) for dilation in dilations[1:]]
        return nn.Sequential(*blocks)

    def _stem_norm(self) -> nn.Module:
        """V1b's stem norm, ``bn1`` (``gn1`` for GN)."""
        return getattr(self, self.stem_norm_name)

    def _frozen_modules(self) -> list[nn.Module]:
        """The stem and the first ``frozen_stages`` stages (nothing when ``frozen_stages < 0``)."""
        if self.frozen_stages < 0:
            return []
        stem = [self.stem] if self.deep_stem else [self.conv1, self._stem_norm()]
        return stem + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, H, W) -> one (N, out_channels[k], H / out_strides[k], W / out_strides[k]) per k."""
        x = self.stem(x) if self.deep_stem else self.relu(self._stem_norm()(self.conv1(x)))
        x = self.maxpool(x)  # (N, stem_channels, H/4, W/4)
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


class ResNetV1c(ResNet):
    """ResNet with the deep stem: three 3x3 convs (``stem.0/1/3/4/6/7``) instead of the 7x7 conv."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)


class ResNetV1d(ResNet):
    """ResNetV1c plus average-pooled shortcuts: ``downsample.0`` AvgPool, ``.1`` 1x1 conv, ``.2`` norm."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=True, **kwargs)
