"""FPN: feature pyramid network neck (Lin et al., arXiv:1612.03144), as MMSegmentation configures it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.nn import ConvModule, resize

EXTRA_CONV_SOURCES = ("on_input", "on_lateral", "on_output")


class FPN(nn.Module):
    """1x1 ``lateral_convs`` on the inputs ``start_level .. end_level``, a top-down pathway (each level plus
    the upsampled level above it) and 3x3 ``fpn_convs``; then ``num_outs - used levels`` extra levels on
    top, each of half the size of the one below it.

    Args:
        in_channels: channels of every input level, finest first.
        out_channels: channels of every output level.
        num_outs: number of output levels.
        start_level: first input level used.
        end_level: one past the last input level used (-1: all); with it set, no extra level is allowed.
        add_extra_convs: how the extra levels are made: False: max-pooling (kernel 1, stride 2) of the level
            below; otherwise stride-2 3x3 convs, the first one on the last used input (``'on_input'``), its
            lateral (``'on_lateral'``) or its output (``'on_output'``, also what True means), the others
            on the extra level below.
        extra_convs_on_inputs: with ``add_extra_convs=True``, means ``'on_input'`` (older configs).
        relu_before_extra_convs: apply ReLU to the input of the second and later extra convs.
        no_norm_on_lateral: no norm in the lateral convs.
        conv_cfg, norm_cfg, act_cfg: of every conv block (no norm and no activation by default).
        upsample_cfg: ``resize`` arguments of the top-down pathway: ``mode`` (and ``align_corners``), and
            either ``scale_factor`` or, by default, the size of the level below.

    Input: features (N, in_channels[i], h_i, w_i). Output: ``num_outs`` maps (N, out_channels, h, w).
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        num_outs: int,
        start_level: int = 0,
        end_level: int = -1,
        add_extra_convs: bool | str = False,
        extra_convs_on_inputs: bool = False,
        relu_before_extra_convs: bool = False,
        no_norm_on_lateral: bool = False,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
        upsample_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__()
        if not isinstance(in_channels, (list, tuple)):
            raise TypeError(f"FPN: in_channels must be a list, got {in_channels!r}")
        num_ins = len(in_channels)
        if end_level == -1:
            end_level = num_ins
            if num_outs < num_ins - start_level:
                raise ValueError(f"FPN: num_outs={num_outs} is fewer than the {num_ins - start_level} levels "
                                 f"from start_level={start_level}")
        elif end_level > num_ins or num_outs != end_level - start_level:
            raise ValueError(f"FPN: with end_level={end_level}, end_level must be <= {num_ins} and num_outs "
                             f"must be end_level - start_level = {end_level - start_level}, got {num_outs}")
        if isinstance(add_extra_convs, str) and add_extra_convs not in EXTRA_CONV_SOURCES:
            raise ValueError(f"FPN: add_extra_convs must be a bool or one of {EXTRA_CONV_SOURCES}, "
                             f"got {add_extra_convs!r}")
        if add_extra_convs is True:
            add_extra_convs = "on_input" if extra_convs_on_inputs else "on_output"
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.backbone_end_level = end_level
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.upsample_cfg = dict(upsample_cfg if upsample_cfg is not None else dict(mode="nearest"))

        def block(in_ch: int, kernel_size: int, stride: int = 1, norm: dict | None = norm_cfg) -> ConvModule:
            return ConvModule(in_ch, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              conv_cfg=conv_cfg, norm_cfg=norm, act_cfg=act_cfg, inplace=False)

        used = range(start_level, end_level)
        lateral_norm = None if no_norm_on_lateral else norm_cfg
        self.lateral_convs = nn.ModuleList(block(in_channels[i], 1, norm=lateral_norm) for i in used)
        self.fpn_convs = nn.ModuleList(block(out_channels, 3) for _ in used)
        num_extra = num_outs - len(used)
        if add_extra_convs and num_extra > 0:
            first_in = in_channels[end_level - 1] if add_extra_convs == "on_input" else out_channels
            self.fpn_convs.extend(block(first_in if i == 0 else out_channels, 3, stride=2) for i in range(num_extra))
        for module in self.modules():  # MMSegmentation's init_cfg: Xavier (uniform) on every conv
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """``len(in_channels)`` maps, finest first -> ``num_outs`` maps (N, out_channels, h_k, w_k)."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN: expected {len(self.in_channels)} input levels, got {len(inputs)}")
        laterals = [conv(inputs[self.start_level + i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down, each level after the one above got its sum
            if "scale_factor" in self.upsample_cfg:
                upsampled = resize(laterals[i], **self.upsample_cfg)
            else:
                upsampled = resize(laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + upsampled
        num_used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(num_used)]
        if self.num_outs > num_used and not self.add_extra_convs:
            for _ in range(self.num_outs - num_used):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        elif self.num_outs > num_used:
            sources = dict(on_input=inputs[self.backbone_end_level - 1], on_lateral=laterals[-1],
                           on_output=outs[-1])
            outs.append(self.fpn_convs[num_used](sources[self.add_extra_convs]))
            for conv in self.fpn_convs[num_used + 1:]:
                outs.append(conv(F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        return outs
