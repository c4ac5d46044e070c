"""DNLHead: an FCN head with a disentangled non-local block between its convs (DNLNet, arXiv:2006.06668)."""

from __future__ import annotations

import torch

from semseg.models.heads.fcn_block import FCNBlockHead
from semseg.nn.non_local import DisentangledNonLocal2d


class DNLHead(FCNBlockHead):
    """``convs.0`` -> ``dnl_block`` (:class:`DisentangledNonLocal2d`) -> ``convs.1`` [-> ``conv_cat``].

    Args:
        reduction: channel reduction of the block's projections.
        use_scale: scale the ``embedded_gaussian`` logits by ``1/sqrt(inter_channels)``.
        mode: the block's pairwise function (see :class:`NonLocal2d`).
        temperature: divides the ``embedded_gaussian`` logits.
        **kwargs: :class:`FCNHead` arguments except ``num_convs`` (always 2).
    """

    def __init__(self, reduction: int = 2, use_scale: bool = True, mode: str = "embedded_gaussian",
                 temperature: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.dnl_block = DisentangledNonLocal2d(self.channels, reduction=reduction, use_scale=use_scale,
                                                conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, mode=mode,
                                                temperature=temperature)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        return self.dnl_block(x)
