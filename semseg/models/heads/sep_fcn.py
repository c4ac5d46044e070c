"""DepthwiseSeparableFCNHead: FCNHead with depthwise-separable convs (Fast-SCNN, arXiv:1902.04502)."""

from __future__ import annotations

from torch import nn

from semseg.models.heads.fcn import FCNHead
from semseg.nn.depthwise_separable import DepthwiseSeparableConvModule


class DepthwiseSeparableFCNHead(FCNHead):
    """:class:`FCNHead` whose ``convs`` and ``conv_cat`` are depthwise-separable conv blocks.

    Each block is a depthwise kxk conv + norm (activation ``dw_act_cfg``; none by default) and a pointwise
    1x1 conv + norm + ReLU. As in MMSegmentation, the blocks take the head's ``norm_cfg`` but not its
    ``conv_cfg`` / ``act_cfg``, and ``dilation`` does not apply to them.

    Args:
        dw_act_cfg: activation after each depthwise conv.
        **kwargs: :class:`FCNHead` arguments (``num_convs`` >= 1, ``kernel_size``, ``concat_input``, ...).

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, dw_act_cfg: dict | None = None, **kwargs):
        if kwargs.get("num_convs", 2) < 1:
            raise ValueError(f"DepthwiseSeparableFCNHead needs num_convs >= 1, got {kwargs['num_convs']}")
        super().__init__(**kwargs)

        def block(in_ch: int) -> DepthwiseSeparableConvModule:
            return DepthwiseSeparableConvModule(in_ch, self.channels, self.kernel_size,
                                                padding=self.kernel_size // 2, norm_cfg=self.norm_cfg,
                                                dw_act_cfg=dw_act_cfg)

        self.convs = nn.Sequential(*(block(self.in_channels if i == 0 else self.channels)
                                     for i in range(self.num_convs)))
        if self.concat_input:
            self.conv_cat = block(self.in_channels + self.channels)
