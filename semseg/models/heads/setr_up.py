"""SETRUPHead: SETR's naive and progressive (PUP) up-sampling decoders (SETR, arXiv:2012.15840, sec. 3.3)."""

from __future__ import annotations

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn.layer_norm_2d import build_layer_norm_2d
from semseg.nn.upsample import Upsample

DEFAULT_NORM_LAYER = dict(type="LN", eps=1e-6, requires_grad=True)


class SETRUPHead(BaseDecodeHead):
    """LayerNorm over each pixel of the ViT map (``norm``), then ``num_convs`` blocks of (conv, bilinear
    x``up_scale``) in ``up_convs`` (``up_convs.i.0`` is the conv block).

    Naive SETR: one 1x1 block, x4 (the segmentor resizes the rest of the way). PUP: four 3x3 blocks, x2
    each (stride 16 -> 1).

    Args:
        norm_layer: the LayerNorm config.
        num_convs: conv-upsample blocks; 0 leaves only the norm (needs ``in_channels == channels``).
        up_scale: resize factor after each conv block; each size is floored (int(h * up_scale)).
        kernel_size: 1 or 3 (padding keeps the size).
        init_cfg: accepted for config compatibility (LayerNorm at 1 / 0 and ``conv_seg`` at N(0, 0.01)
            are what the modules start with anyway).
        **kwargs: :class:`BaseDecodeHead` arguments; one input (``in_channels`` an int).

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h * up_scale ** num_convs, w * up_scale ** num_convs).
    """

    def __init__(
        self,
        norm_layer: dict = DEFAULT_NORM_LAYER,
        num_convs: int = 1,
        up_scale: float = 4,
        kernel_size: int = 3,
        init_cfg: dict | list[dict] | None = None,
        **kwargs,
    ):
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")
        if num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {num_convs}")
        super().__init__(init_cfg=init_cfg, **kwargs)
        if not isinstance(self.in_channels, int):
            raise TypeError(f"SETRUPHead reads one input: in_channels must be an int, got {self.in_channels!r}")
        if num_convs == 0 and self.in_channels != self.channels:
            raise ValueError(f"num_convs=0 feeds the input to conv_seg, so in_channels ({self.in_channels}) "
                             f"must equal channels ({self.channels})")
        self.num_convs, self.up_scale, self.kernel_size = num_convs, up_scale, kernel_size
        self.norm = build_layer_norm_2d(norm_layer, self.in_channels)
        in_chs = [self.in_channels] + [self.channels] * (num_convs - 1)
        self.up_convs = nn.ModuleList(
            nn.Sequential(
                self.conv_block(c, self.channels, kernel_size, padding=kernel_size // 2),
                Upsample(scale_factor=up_scale, mode="bilinear", align_corners=self.align_corners),
            )
            for c in in_chs[:num_convs]
        )

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h * up_scale ** num_convs, ...)."""
        x = self.norm(self.transform_inputs(inputs))
        for up_conv in self.up_convs:
            x = up_conv(x)
        return x
