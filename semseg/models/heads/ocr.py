"""OCRHead: object-contextual representations (OCRNet, arXiv:1909.11065), the second stage of a cascade.

The previous stage's logits give soft object regions; each region's representation is the feature average
weighted by the region's softmax over pixels (paper sec. 3.2, eq. 2). Every pixel then attends over the
regions (eq. 3-4) and its features are fused with the gathered object context (eq. 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.models.losses import head_losses
from semseg.nn.conv_module import ConvModule
from semseg.nn.self_attention import SelfAttentionBlock


def spatial_gather(feats: torch.Tensor, logits: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Object region representations: feats (N, C, h, w), logits (N, K, h, w) -> (N, C, K, 1).

    Region ``k`` is ``sum_p softmax_p(scale * logits[k, p]) * feats[:, p]`` over the pixels ``p``; the
    result is shaped as a K x 1 map so the attention block's 1x1 projections apply to it.
    """
    if feats.shape[0] != logits.shape[0] or feats.shape[2:] != logits.shape[2:]:
        raise ValueError(f"spatial_gather: the previous stage's logits {tuple(logits.shape)} must match the "
                         f"features {tuple(feats.shape)} in batch and spatial size")
    weights = F.softmax(scale * logits.flatten(2), dim=2)  # (N, K, h*w)
    regions = torch.bmm(weights, feats.flatten(2).transpose(1, 2))  # (N, K, C)
    return regions.transpose(1, 2).unsqueeze(3).contiguous()


class ObjectAttentionBlock(SelfAttentionBlock):
    """Pixels (queries) attend over the object regions (keys, values), then a 1x1 ``bottleneck`` fuses the
    object context with the pixel features.

    Keys and queries go through two 1x1 conv-norm-act projections to ``channels``, values and the output
    through one each; similarities are scaled by ``channels**-0.5``.
    Input: pixels (N, in_channels, h, w), regions (N, in_channels, K, 1); output (N, in_channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int, conv_cfg: dict | None, norm_cfg: dict | None,
                 act_cfg: dict | None):
        super().__init__(
            in_channels, in_channels, channels, in_channels, key_query_num_convs=2, key_query_norm=True,
            value_out_num_convs=1, value_out_norm=True, matmul_norm=True, with_out=True, conv_cfg=conv_cfg,
            norm_cfg=norm_cfg, act_cfg=act_cfg,
        )
        self.bottleneck = ConvModule(2 * in_channels, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                     act_cfg=act_cfg)

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """pixels (N, C, h, w), regions (N, C, K, 1) -> (N, C, h, w)."""
        context = super().forward(pixels, regions)
        return self.bottleneck(torch.cat([context, pixels], dim=1))


class OCRHead(BaseDecodeHead):
    """A 3x3 ``bottleneck`` over the selected input, object regions gathered with the previous stage's
    logits, then ``object_context_block`` (:class:`ObjectAttentionBlock`).

    Args:
        ocr_channels: channels of the attention's keys and queries.
        scale: multiplies the previous logits before the softmax over pixels. Values above 1 are
            rejected: MMSegmentation 1.2.2 then also max-pools the queries and fails on the smaller context.
        **kwargs: :class:`BaseDecodeHead` arguments; ``channels`` is the width of the pixel and region
            representations.

    Called as ``head(inputs, prev_logits)`` and ``head.loss(inputs, labels, prev_logits)``, with
    ``prev_logits`` (N, K, h, w) at the size of the selected (transformed) input.
    Output of ``forward``: (N, out_channels, h, w).
    """

    def __init__(self, ocr_channels: int, scale: float = 1, **kwargs):
        if scale > 1:
            raise ValueError(f"OCRHead supports scale <= 1 only, got {scale} (MMSegmentation 1.2.2 max-pools "
                             "the queries for scale > 1 and then fails to fuse the smaller context)")
        super().__init__(**kwargs)
        self.ocr_channels = ocr_channels
        self.scale = scale
        self.bottleneck = self.conv_block(self.in_channels, self.channels, 3, padding=1)
        self.object_context_block = ObjectAttentionBlock(self.channels, ocr_channels, self.conv_cfg,
                                                         self.norm_cfg, self.act_cfg)

    def forward_features(self, inputs: list[torch.Tensor], prev_logits: torch.Tensor) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) and prev_logits (N, K, h, w) -> (N, channels, h, w)."""
        feats = self.bottleneck(self.transform_inputs(inputs))
        regions = spatial_gather(feats, prev_logits, self.scale)  # (N, channels, K, 1)
        return self.object_context_block(feats, regions)

    def forward(self, inputs: list[torch.Tensor], prev_logits: torch.Tensor) -> torch.Tensor:
        """Multi-level features and the previous stage's logits -> logits (N, out_channels, h, w)."""
        return self.cls_seg(self.forward_features(inputs, prev_logits))

    def loss(self, inputs: list[torch.Tensor], labels: torch.Tensor,
             prev_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses of ``forward``'s logits against labels (N, H, W): ``{'loss_ce', 'acc_seg'}``."""
        return head_losses(self, self(inputs, prev_logits), labels)
