"""HRNet (HRNetV2, Wang et al., arXiv:1904.04514) with MMSegmentation's parameter names.

A stem of two stride-2 3x3 convs (``conv1``/``bn1``, ``conv2``/``bn2``) and one residual stage
(``layer1``) at stride 4, then three stages (``stage2..4``) of high-resolution modules that keep one
branch per resolution (strides 4, 8, 16, 32) and exchange information between them after each module
(``fuse_layers``). ``transition1..3`` open the new, lower-resolution branch of each stage.
The residual blocks are ResNet's (``semseg.models.backbones.resnet``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from semseg.models.backbones.base import FreezableBackbone, check_pretrained
from semseg.models.backbones.resnet import BasicBlock, Bottleneck, _ResBlock, init_res_backbone
from semseg.nn import add_norms, build_conv, build_norm, resize

BLOCKS: dict[str, type[_ResBlock]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}
STAGE_KEYS = ("num_modules", "num_branches", "block", "num_blocks", "num_channels")


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, stride: int, relu: bool,
               conv_cfg: dict | None, norm_cfg: dict) -> nn.Sequential:
    """Bias-free conv (``.0``), norm (``.1``) and, with ``relu``, a ReLU (``.2``)."""
    layers = [build_conv(conv_cfg, in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2, bias=False),
              build_norm(norm_cfg, out_channels)[1]]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _residual_blocks(block: type[_ResBlock], inplanes: int, planes: int, num_blocks: int, with_cp: bool,
                     conv_cfg: dict | None, norm_cfg: dict) -> nn.Sequential:
    """``num_blocks`` stride-1 blocks; the first projects ``inplanes`` to ``planes * expansion`` when they differ."""
    outplanes = planes * block.expansion
    downsample = None
    if inplanes != outplanes:
        downsample = _conv_norm(inplanes, outplanes, 1, 1, False, conv_cfg, norm_cfg)
    return nn.Sequential(*(
        block(inplanes if i == 0 else outplanes, planes, downsample=downsample if i == 0 else None,
              with_cp=with_cp, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        for i in range(num_blocks)
    ))


def _upsample(x: torch.Tensor, factor: int, size: torch.Size) -> torch.Tensor:
    """Bilinear upsampling by ``factor``, then to ``size`` when the two differ (odd inputs).

    MMSegmentation's fuse path first scales by the factor (``Upsample``), then resizes to the target;
    on odd sizes the two steps differ from one direct resize, so both are kept.
    """
    h, w = x.shape[2:]
    x = resize(x, (h * factor, w * factor), mode="bilinear", align_corners=False)
    if x.shape[2:] != size:
        x = resize(x, size, mode="bilinear", align_corners=False)
    return x


class HRModule(nn.Module):
    """Parallel residual branches, one per resolution, then a fusion into each output resolution.

    Output ``i`` is ``relu(sum_j path[i][j](x_j))``: the identity for ``j == i``, a 1x1 conv + norm then
    bilinear upsampling for a lower resolution ``j > i``, and ``i - j`` stride-2 3x3 conv + norm (ReLU
    between them) for a higher resolution ``j < i`` (``fuse_layers.i.j``; ``None`` on the diagonal).

    Args:
        block: residual block class of every branch.
        num_blocks, in_channels, num_channels: per branch: blocks, input channels, block planes.
        multiscale_output: output every resolution; otherwise only the highest one.
    """

    def __init__(self, block: type[_ResBlock], num_blocks: Sequence[int], in_channels: Sequence[int],
                 num_channels: Sequence[int], multiscale_output: bool = True, with_cp: bool = False,
                 conv_cfg: dict | None = None,
                 norm_cfg: dict = dict(type="BN", requires_grad=True)):  # noqa: B006 - never mutated
        super().__init__()
        num_branches = len(num_blocks)
        if not len(in_channels) == len(num_channels) == num_branches:
            raise ValueError(f"num_blocks {tuple(num_blocks)}, in_channels {tuple(in_channels)} and "
                             f"num_channels {tuple(num_channels)} need one entry per branch")
        self.branches = nn.ModuleList(
            _residual_blocks(block, c_in, c, n, with_cp, conv_cfg, norm_cfg)
            for c_in, c, n in zip(in_channels, num_channels, num_blocks, strict=True)
        )
        channels = [c * block.expansion for c in num_channels]
        self.out_channels = channels if multiscale_output else channels[:1]
        self.fuse_layers = None
        if num_branches > 1:
            num_outputs = num_branches if multiscale_output else 1
            self.fuse_layers = nn.ModuleList(
                nn.ModuleList(self._fuse_path(j, i, channels, conv_cfg, norm_cfg) for j in range(num_branches))
                for i in range(num_outputs)
            )
        self.relu = nn.ReLU()

    @staticmethod
    def _fuse_path(j: int, i: int, channels: list[int], conv_cfg: dict | None,
                   norm_cfg: dict) -> nn.Sequential | None:
        """The convolutions taking branch ``j`` to branch ``i``'s channels (upsampling happens in forward)."""
        if j == i:
            return None
        if j > i:
            return _conv_norm(channels[j], channels[i], 1, 1, False, conv_cfg, norm_cfg)
        steps = [_conv_norm(channels[j], channels[j], 3, 2, True, conv_cfg, norm_cfg) for _ in range(i - j - 1)]
        steps.append(_conv_norm(channels[j], channels[i], 3, 2, False, conv_cfg, norm_cfg))
        return nn.Sequential(*steps)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (N, C_j, H_j, W_j) per branch -> one (N, C_i, H_i, W_i) per output branch."""
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.fuse_layers is None:
            return xs
        outs = []
        for i, paths in enumerate(self.fuse_layers):
            terms = []
            for j, (path, x) in enumerate(zip(paths, xs, strict=True)):
                if j == i:
                    terms.append(x)
                elif j > i:
                    terms.append(_upsample(path(x), 2 ** (j - i), xs[i].shape[2:]))
                else:
                    terms.append(path(x))
            outs.append(self.relu(sum(terms)))
        return outs


def _transition(pre_channels: list[int], channels: list[int], conv_cfg: dict | None,
                norm_cfg: dict) -> nn.ModuleList:
    """From one stage's branches to the next's: a 3x3 conv where an existing branch changes channels
    (``None`` where it does not), and a chain of stride-2 3x3 convs from the lowest resolution for each
    new branch (``transition.i.k``)."""
    layers: list[nn.Module | None] = []
    for i, c in enumerate(channels):
        if i < len(pre_channels):
            same = c == pre_channels[i]
            layers.append(None if same else _conv_norm(pre_channels[i], c, 3, 1, True, conv_cfg, norm_cfg))
        else:
            steps = i + 1 - len(pre_channels)
            last = pre_channels[-1]
            layers.append(nn.Sequential(*(
                _conv_norm(last, c if k == steps - 1 else last, 3, 2, True, conv_cfg, norm_cfg)
                for k in range(steps)
            )))
    return nn.ModuleList(layers)


def _check_extra(extra: dict) -> None:
    for i in range(1, 5):
        stage = extra.get(f"stage{i}")
        if stage is None:
            raise KeyError(f"HRNet extra needs stage1..stage4; stage{i} is missing")
        missing = [k for k in STAGE_KEYS if k not in stage]
        if missing:
            raise KeyError(f"HRNet extra.stage{i} lacks {missing}")
        if stage["block"] not in BLOCKS:
            raise KeyError(f"extra.stage{i}.block must be one of {sorted(BLOCKS)}, got {stage['block']!r}")
        if not len(stage["num_blocks"]) == len(stage["num_channels"]) == stage["num_branches"]:
            raise ValueError(f"extra.stage{i}: num_blocks {tuple(stage['num_blocks'])} and num_channels "
                             f"{tuple(stage['num_channels'])} need num_branches ({stage['num_branches']}) entries")
        if stage["num_modules"] < 1:
            raise ValueError(f"extra.stage{i}.num_modules must be >= 1, got {stage['num_modules']}")
    if extra["stage1"]["num_branches"] != 1:
        raise ValueError(f"extra.stage1 has one branch, got num_branches={extra['stage1']['num_branches']}")
    for i in range(1, 4):
        if extra[f"stage{i + 1}"]["num_branches"] < extra[f"stage{i}"]["num_branches"]:
            raise ValueError(f"extra.stage{i + 1} has fewer branches than stage{i}")


class HRNet(FreezableBackbone):
    """HRNet backbone; returns the stage-4 branches (strides 4, 8, 16, 32 for four branches).

    Args (the config's keys, MMSegmentation's names and defaults):
        extra: ``stage1`` .. ``stage4``, each a dict of ``num_modules`` (HRModules in the stage),
            ``num_branches``, ``block`` (``'BASIC'`` or ``'BOTTLENECK'``), ``num_blocks`` and
            ``num_channels`` (per branch; channels are block planes, times the block's expansion).
            ``stage1`` has one branch and forms ``layer1``.
        in_channels: input image channels.
        conv_cfg, norm_cfg: conv and norm layer configs (``norm_cfg`` type picks ``bn1`` / ``gn1`` keys).
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training.
        with_cp: gradient checkpointing in each residual block during training.
        frozen_stages: freeze the stem and stages 1..frozen_stages with their transitions (no grad, norms
            in eval mode); -1: none.
        zero_init_residual: zero the last norm of each residual block, so each block starts as the identity
            (MMSegmentation 1.2.2 accepts this flag for HRNet but never applies it).
        multiscale_output: return every stage-4 branch; otherwise only the highest-resolution one.
        pretrained, init_cfg: where pretrained weights come from; stored, never downloaded here.

    Attributes:
        out_channels: channels of each returned feature map.
        out_strides: output stride (input size / feature size) of each returned feature map.
    """

    def __init__(
        self,
        extra: dict,
        in_channels: int = 3,
        conv_cfg: dict | None = None,
        norm_cfg: dict = dict(type="BN", requires_grad=True),  # noqa: B006 - never mutated
        norm_eval: bool = False,
        with_cp: bool = False,
        frozen_stages: int = -1,
        zero_init_residual: bool = False,
        multiscale_output: bool = True,
        pretrained: str | None = None,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        _check_extra(extra)
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be -1 (none) to 4, got {frozen_stages}")
        check_pretrained(pretrained, init_cfg)
        self.extra = extra
        self.pretrained = pretrained
        self.init_cfg = init_cfg
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        self._layer_args = dict(with_cp=with_cp, conv_cfg=conv_cfg, norm_cfg=norm_cfg)

        self.conv1 = build_conv(conv_cfg, in_channels, 64, 3, stride=2, padding=1, bias=False)
        self.conv2 = build_conv(conv_cfg, 64, 64, 3, stride=2, padding=1, bias=False)
        self.norm_names = add_norms(self, norm_cfg, (64, 64))  # bn1, bn2 (gn1, gn2 for GN)
        self.relu = nn.ReLU(inplace=True)

        stage1 = extra["stage1"]
        block = BLOCKS[stage1["block"]]
        self.layer1 = _residual_blocks(block, 64, stage1["num_channels"][0], stage1["num_blocks"][0],
                                       with_cp, conv_cfg, norm_cfg)
        channels = [stage1["num_channels"][0] * block.expansion]
        self.transition1, self.stage2, channels = self._make_stage(extra["stage2"], channels, True)
        self.transition2, self.stage3, channels = self._make_stage(extra["stage3"], channels, True)
        self.transition3, self.stage4, channels = self._make_stage(extra["stage4"], channels,
                                                                   multiscale_output)
        self.out_channels = channels
        self.out_strides = [4 * 2**i for i in range(len(channels))]

        init_res_backbone(self, zero_init_residual)
        self._freeze_stages()

    def _make_stage(self, cfg: dict, pre_channels: list[int],
                    multiscale_output: bool) -> tuple[nn.ModuleList, nn.Sequential, list[int]]:
        """The transition into a stage, the stage's HRModules, and the channels of its outputs."""
        block = BLOCKS[cfg["block"]]
        channels = [c * block.expansion for c in cfg["num_channels"]]
        transition = _transition(pre_channels, channels, self._layer_args["conv_cfg"],
                                 self._layer_args["norm_cfg"])
        num_modules = cfg["num_modules"]
        modules = [
            HRModule(block, cfg["num_blocks"], channels, cfg["num_channels"],
                     multiscale_output=multiscale_output or k < num_modules - 1, **self._layer_args)
            for k in range(num_modules)
        ]
        return transition, nn.Sequential(*modules), modules[-1].out_channels

    def _frozen_modules(self) -> list[nn.Module]:
        """The stem, then ``layer1`` + ``transition1``, ``stage2`` + ``transition2``, ``stage3`` +
        ``transition3``, ``stage4``, up to ``frozen_stages``."""
        if self.frozen_stages < 0:
            return []
        stem = [self.conv1, getattr(self, self.norm_names[0]), self.conv2, getattr(self, self.norm_names[1])]
        stages = [[self.layer1, self.transition1], [self.stage2, self.transition2],
                  [self.stage3, self.transition3], [self.stage4]]
        return stem + [m for stage in stages[:self.frozen_stages] for m in stage]

    @staticmethod
    def _enter(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        """Inputs of a stage's branches: existing branches (converted where channels change), then the new
        ones, each computed from the lowest-resolution output."""
        return [y if layer is None else layer(y)
                for layer, y in zip(transition, ys + [ys[-1]] * (len(transition) - len(ys)), strict=True)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, H, W) -> one (N, out_channels[k], H / out_strides[k], W / out_strides[k]) per k
        (sizes round up: every stride-2 conv maps n to ceil(n / 2))."""
        x = self.relu(getattr(self, self.norm_names[0])(self.conv1(x)))
        x = self.relu(getattr(self, self.norm_names[1])(self.conv2(x)))  # (N, 64, H/4, W/4)
        ys = [self.layer1(x)]
        ys = self.stage2(self._enter(self.transition1, ys))
        ys = self.stage3(self._enter(self.transition2, ys))
        return self.stage4(self._enter(self.transition3, ys))
