"""U-Net backbone (Ronneberger et al., MICCAI 2015) with MMSegmentation's parameter names and options.

An encoder of ``num_stages`` conv blocks; stage ``i > 0`` halves the resolution first, by a stride-2 conv
(``strides[i] == 2``) or else by a 2x2 max pool (``downsamples[i - 1]``), and doubles the channels
(``base_channels * 2**i``). A decoder of ``num_stages - 1`` up-conv blocks walks back: each upsamples the
deeper map to the skip's size and channels (``InterpConv``: interpolation then conv; ``DeconvModule``: a
transposed conv; a 1x1 conv where the stage did not downsample), concatenates ``[skip, upsampled]`` and
fuses them with a conv block. ``forward`` returns the deepest encoder map then every decoder output, deepest
first: the zoo's heads read the last one (full resolution, ``base_channels``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.utils.checkpoint as cp
from torch import nn

from semseg.models.backbones.base import FreezableBackbone, check_pretrained, init_conv_norm
from semseg.nn.activation import build_activation
from semseg.nn.conv_module import ConvModule
from semseg.nn.norm import build_norm
from semseg.nn.upsample import Upsample

_BILINEAR_X2 = dict(scale_factor=2, mode="bilinear", align_corners=False)


def _run(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    """``module(x)``, under gradient checkpointing when ``with_cp`` and ``x`` requires grad."""
    if with_cp and x.requires_grad:
        return cp.checkpoint(module, x, use_reentrant=False)
    return module(x)


class BasicConvBlock(nn.Module):
    """``num_convs`` 3x3 conv-norm-act layers (``convs.<i>``); only the first has ``stride``, the others have
    ``dilation`` (the first is undilated). (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, num_convs: int = 2, stride: int = 1,
                 dilation: int = 1, with_cp: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
                 act_cfg: dict | None = dict(type="ReLU")):  # noqa: B006 - never mutated
        super().__init__()
        self.with_cp = with_cp
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        layers = [ConvModule(in_channels, out_channels, 3, stride=stride, padding=1, **cfgs)]
        layers += [ConvModule(out_channels, out_channels, 3, padding=dilation, dilation=dilation, **cfgs)
                   for _ in range(num_convs - 1)]
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.convs, x, self.with_cp)


class InterpConv(nn.Module):
    """Upsampling by interpolation then a conv-norm-act (``conv_first``: conv first), in ``interp_upsample``
    (index 0 / 1 as in MMSegmentation). Default: bilinear x2, 1x1 conv.
    (N, in_channels, H, W) -> (N, out_channels, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, with_cp: bool = False,
                 norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
                 act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
                 *, conv_cfg: dict | None = None, conv_first: bool = False, kernel_size: int = 1,
                 stride: int = 1, padding: int = 0, upsample_cfg: dict = _BILINEAR_X2):
        super().__init__()
        self.with_cp = with_cp
        conv = ConvModule(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                          conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        upsample = Upsample(**upsample_cfg)
        self.interp_upsample = nn.Sequential(conv, upsample) if conv_first else nn.Sequential(upsample, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.interp_upsample, x, self.with_cp)


class DeconvModule(nn.Module):
    """Upsampling by a transposed conv (with bias), norm, activation, in ``deconv_upsamping`` (MMSegmentation's
    spelling). (N, in_channels, H, W) -> (N, out_channels, scale_factor * H, scale_factor * W)."""

    def __init__(self, in_channels: int, out_channels: int, with_cp: bool = False,
                 norm_cfg: dict = dict(type="BN"),  # noqa: B006 - never mutated
                 act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
                 *, kernel_size: int = 4, scale_factor: int = 2):
        super().__init__()
        extra = kernel_size - scale_factor
        if extra < 0 or extra % 2:
            raise ValueError(f"DeconvModule: kernel_size - scale_factor must be even and >= 0, got kernel_size "
                             f"{kernel_size} and scale_factor {scale_factor}")
        self.with_cp = with_cp
        deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=scale_factor,
                                    padding=extra // 2)
        layers = [deconv, build_norm(norm_cfg, out_channels)[1], build_activation(act_cfg, inplace=True)]
        self.deconv_upsamping = nn.Sequential(*[m for m in layers if m is not None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.deconv_upsamping, x, self.with_cp)


UPSAMPLE_LAYERS: dict[str, type[nn.Module]] = {"InterpConv": InterpConv, "DeconvModule": DeconvModule}


class UpConvBlock(nn.Module):
    """One decoder stage: ``upsample`` the deeper map x to the skip's channels (and size), concatenate
    ``[skip, x]``, fuse with ``conv_block``. skip (N, skip_channels, H, W), x (N, in_channels, h, w) ->
    (N, out_channels, H, W). Without ``upsample_cfg`` the upsample is a 1x1 conv (same size)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, num_convs: int = 2,
                 dilation: int = 1, with_cp: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
                 act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
                 upsample_cfg: dict | None = dict(type="InterpConv")):  # noqa: B006 - never mutated
        super().__init__()
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv_block = BasicConvBlock(2 * skip_channels, out_channels, num_convs, dilation=dilation,
                                         with_cp=with_cp, **cfgs)
        if upsample_cfg is None:
            self.upsample = ConvModule(in_channels, skip_channels, 1, **cfgs)
            return
        options = dict(upsample_cfg)
        kind = options.pop("type", None)
        if kind not in UPSAMPLE_LAYERS:
            raise KeyError(f"unknown UNet upsample_cfg type {kind!r}; choose from {sorted(UPSAMPLE_LAYERS)}")
        self.upsample = UPSAMPLE_LAYERS[kind](in_channels, skip_channels, with_cp=with_cp, norm_cfg=norm_cfg,
                                              act_cfg=act_cfg, **options)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([skip, self.upsample(x)], dim=1))


class UNet(FreezableBackbone):
    """U-Net; returns ``num_stages`` maps: the deepest encoder output, then the decoder outputs up to the first
    stage's resolution.

    Args (the config's keys, MMSegmentation's names and defaults):
        in_channels, base_channels: image channels; channels of the first stage (stage i has base * 2**i).
        num_stages: encoder stages (the decoder has one fewer).
        strides: per encoder stage, 1 or 2 (a stride-2 first conv; it replaces the max pool).
        enc_num_convs, dec_num_convs: 3x3 convs per encoder / decoder block.
        downsamples: per stage 1.. (``num_stages - 1`` entries), max-pool by 2 before the stage's block.
        enc_dilations, dec_dilations: dilation of each block's convs after its first.
        with_cp: gradient checkpointing in each block when the input requires grad.
        conv_cfg, norm_cfg, act_cfg: layer configs of every conv.
        upsample_cfg: ``dict(type='InterpConv', ...)`` or ``dict(type='DeconvModule', ...)`` plus options.
        norm_eval: keep every BatchNorm in eval mode (frozen statistics) during training.
        dcn, plugins: not supported (must be None, as in MMSegmentation).
        pretrained, init_cfg: where pretrained weights come from; stored, never downloaded here.

    Attributes:
        out_channels: channels of each returned map (``base_channels * 2**(num_stages - 1)`` down to
            ``base_channels``).
        out_strides: output stride of each returned map. H and W must be multiples of ``input_divisor``
            (16 for the zoo's five stages), else ``forward`` raises.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_stages: int = 5,
        strides: Sequence[int] = (1, 1, 1, 1, 1),
        enc_num_convs: Sequence[int] = (2, 2, 2, 2, 2),
        dec_num_convs: Sequence[int] = (2, 2, 2, 2),
        downsamples: Sequence[bool] = (True, True, True, True),
        enc_dilations: Sequence[int] = (1, 1, 1, 1, 1),
        dec_dilations: Sequence[int] = (1, 1, 1, 1),
        with_cp: bool = False,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = dict(type="BN"),  # noqa: B006 - never mutated
        act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        upsample_cfg: dict = dict(type="InterpConv"),  # noqa: B006 - never mutated
        norm_eval: bool = False,
        dcn: dict | None = None,
        plugins: list | None = None,
        pretrained: str | None = None,
        init_cfg: dict | list[dict] | None = None,
    ):
        super().__init__()
        if dcn is not None or plugins is not None:
            raise NotImplementedError("UNet: dcn and plugins are not supported (MMSegmentation has neither)")
        per_stage = dict(strides=strides, enc_num_convs=enc_num_convs, enc_dilations=enc_dilations)
        per_decoder = dict(dec_num_convs=dec_num_convs, downsamples=downsamples, dec_dilations=dec_dilations)
        for names, length in ((per_stage, num_stages), (per_decoder, num_stages - 1)):
            for name, values in names.items():
                if len(values) != length:
                    raise ValueError(f"UNet: {name} {tuple(values)} needs {length} entries for num_stages "
                                     f"{num_stages}")
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"UNet: strides must be 1 or 2, got {tuple(strides)}")
        check_pretrained(pretrained, init_cfg)
        self.pretrained, self.init_cfg = pretrained, init_cfg
        self.num_stages, self.base_channels = num_stages, base_channels
        self.strides, self.downsamples = tuple(strides), tuple(downsamples)
        self.norm_eval = norm_eval

        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        stage_strides = [strides[0]]
        for i in range(num_stages):
            channels = base_channels * 2**i
            stage: list[nn.Module] = []
            if i > 0:
                halves = strides[i] == 2 or bool(downsamples[i - 1])
                if strides[i] == 1 and downsamples[i - 1]:
                    stage.append(nn.MaxPool2d(kernel_size=2))
                self.decoder.append(UpConvBlock(
                    channels, channels // 2, channels // 2, dec_num_convs[i - 1], dilation=dec_dilations[i - 1],
                    with_cp=with_cp, upsample_cfg=upsample_cfg if halves else None, **cfgs,
                ))
                stage_strides.append(stage_strides[-1] * (2 if halves else 1))
            stage.append(BasicConvBlock(in_channels, channels, enc_num_convs[i], stride=strides[i],
                                        dilation=enc_dilations[i], with_cp=with_cp, **cfgs))
            self.encoder.append(nn.Sequential(*stage))
            in_channels = channels
        # MMSegmentation's size check counts the halvings of stages 1.. only.
        self.input_divisor = stage_strides[-1] // strides[0]
        self.out_channels = [base_channels * 2**i for i in reversed(range(num_stages))]
        self.out_strides = stage_strides[::-1]

        init_conv_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, H, W) -> ``num_stages`` maps (N, out_channels[k], H / out_strides[k], W / ...)."""
        height, width = x.shape[-2:]
        if height % self.input_divisor or width % self.input_divisor:
            raise ValueError(f"UNet: input size {height}x{width} must be divisible by {self.input_divisor} "
                             f"(num_stages {self.num_stages}, strides {self.strides}, downsamples "
                             f"{self.downsamples}); pad the input or use slide inference with such a crop_size")
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outs = [x]
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](skips[i], x)
            outs.append(x)
        return outs
