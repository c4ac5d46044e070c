"""CCHead: an FCN head with recurrent criss-cross attention between its two convs (CCNet, arXiv:1811.11721)."""

from __future__ import annotations

import torch

from semseg.models.heads.fcn import FCNHead
from semseg.nn.criss_cross import CrissCrossAttention


class CCHead(FCNHead):
    """:class:`FCNHead` with ``num_convs=2``; ``cca`` runs ``recurrence`` times between ``convs[0]`` and
    ``convs[1]`` (its weights shared across passes; two passes reach every position from every other).

    Args:
        recurrence: number of criss-cross passes.
        **kwargs: :class:`FCNHead` arguments except ``num_convs`` (``kernel_size``, ``concat_input``,
            ``dilation``, and the :class:`BaseDecodeHead` ones).

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, recurrence: int = 2, **kwargs):
        if "num_convs" in kwargs:
            raise TypeError("CCHead always has num_convs=2; remove num_convs from its config")
        super().__init__(num_convs=2, **kwargs)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(self.channels)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        out = self.convs[0](x)
        for _ in range(self.recurrence):
            out = self.cca(out)
        out = self.convs[1](out)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out
