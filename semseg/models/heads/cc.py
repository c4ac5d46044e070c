"""CCHead: an FCN head with recurrent criss-cross attention between its two convs (CCNet, arXiv:1811.11721)."""

from __future__ import annotations

import torch

from semseg.models.heads.fcn_block import FCNBlockHead
from semseg.nn.criss_cross import CrissCrossAttention


class CCHead(FCNBlockHead):
    """:class:`FCNBlockHead` whose block, ``cca``, runs ``recurrence`` times between ``convs[0]`` and
    ``convs[1]`` (its weights shared across passes; two passes reach every position from every other).

    Args:
        recurrence: number of criss-cross passes.
        **kwargs: :class:`FCNHead` arguments except ``num_convs`` (``kernel_size``, ``concat_input``,
            ``dilation``, and the :class:`BaseDecodeHead` ones).

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, recurrence: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(self.channels)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x
