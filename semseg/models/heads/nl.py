"""NLHead: an FCN head with a non-local block between its convs (NLNet, arXiv:1711.07971)."""

from __future__ import annotations

import torch

from semseg.models.heads.fcn_block import FCNBlockHead
from semseg.nn.non_local import NonLocal2d


class NLHead(FCNBlockHead):
    """``convs.0`` -> ``nl_block`` (:class:`NonLocal2d` over ``channels``) -> ``convs.1`` [-> ``conv_cat``].

    Args:
        reduction: channel reduction of the block's projections.
        use_scale: scale the ``embedded_gaussian`` logits by ``1/sqrt(inter_channels)``.
        mode: the block's pairwise function (see :class:`NonLocal2d`).
        **kwargs: :class:`FCNHead` arguments except ``num_convs`` (always 2).
    """

    def __init__(self, reduction: int = 2, use_scale: bool = True, mode: str = "embedded_gaussian", **kwargs):
        super().__init__(**kwargs)
        self.nl_block = NonLocal2d(self.channels, reduction=reduction, use_scale=use_scale,
                                   conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, mode=mode)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        return self.nl_block(x)
