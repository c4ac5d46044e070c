"""PSPHead: pyramid pooling, then a 3x3 fusion (PSPNet, arXiv:1612.01105)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.nn import PyramidPooling


class PSPHead(BaseDecodeHead):
    """Pyramid pooling over the selected input, then a 3x3 ``bottleneck`` over ``[input, pooled...]``.

    Args:
        pool_scales: output sizes of the pooling branches.
        **kwargs: :class:`BaseDecodeHead` arguments.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_scales, (list, tuple)):
            raise TypeError(f"pool_scales must be a list or tuple, got {pool_scales!r}")
        self.pool_scales = pool_scales
        self.psp_modules = PyramidPooling(pool_scales, self.in_channels, self.channels, self.conv_cfg,
                                          self.norm_cfg, self.act_cfg, self.align_corners)
        self.bottleneck = self.conv_block(self.in_channels + len(pool_scales) * self.channels, self.channels, 3,
                                          padding=1)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))
