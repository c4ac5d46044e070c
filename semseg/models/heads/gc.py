"""GCHead: an FCN head with a global context block between its convs (GCNet, arXiv:1904.11492)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from semseg.models.heads.fcn_block import FCNBlockHead
from semseg.nn.context_block import ContextBlock


class GCHead(FCNBlockHead):
    """``convs.0`` -> ``gc_block`` (:class:`ContextBlock` over ``channels``) -> ``convs.1`` [-> ``conv_cat``].

    Args:
        ratio: bottleneck width of the block as a fraction of ``channels``.
        pooling_type: ``'att'`` or ``'avg'`` context pooling.
        fusion_types: ``'channel_add'`` and/or ``'channel_mul'``.
        **kwargs: :class:`FCNHead` arguments except ``num_convs`` (always 2).
    """

    def __init__(self, ratio: float = 1 / 4, pooling_type: str = "att",
                 fusion_types: Sequence[str] = ("channel_add",), **kwargs):
        super().__init__(**kwargs)
        self.gc_block = ContextBlock(self.channels, ratio, pooling_type=pooling_type, fusion_types=fusion_types)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        return self.gc_block(x)
