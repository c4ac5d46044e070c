"""An FCN head with a context block between its two convs: the shape of NLHead, DNLHead, GCHead and CCHead."""

from __future__ import annotations

import torch

from semseg.models.heads.fcn import FCNHead


class FCNBlockHead(FCNHead):
    """:class:`FCNHead` with ``num_convs=2`` and ``block`` applied between ``convs.0`` and ``convs.1``.

    A subclass registers its block under the checkpoint's name (``nl_block``, ``gc_block``, ...) and
    returns it from ``block``.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, **kwargs):
        if "num_convs" in kwargs:
            raise TypeError(f"{type(self).__name__} always has num_convs=2; remove num_convs from its config")
        super().__init__(num_convs=2, **kwargs)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        """The block between the convs: (N, channels, h, w) -> (N, channels, h, w)."""
        raise NotImplementedError

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        feats = self.convs[1](self.block(self.convs[0](x)))
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats
