"""DAHead: position and channel attention side by side (DANet, arXiv:1809.02983)."""

from __future__ import annotations

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.models.losses import head_losses
from semseg.nn.scale import Scale
from semseg.nn.self_attention import SelfAttentionBlock


class PositionAttention(SelfAttentionBlock):
    """PAM (paper sec. 3.2): ``x + gamma * attention(x, x)``, with plain 1x1 key/query projections to
    ``channels``, a value projection keeping ``in_channels``, and unscaled similarities.

    (N, in_channels, h, w) -> (N, in_channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int):
        super().__init__(in_channels, in_channels, channels, in_channels, with_out=False)
        self.gamma = Scale(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # self-attention: one input
        return self.gamma(super().forward(x, x)) + x


class ChannelAttention(nn.Module):
    """CAM (paper sec. 3.3): each channel gathers the channels least similar to it, ``x + gamma * out``.

    Attention over channels is ``softmax(max_j E - E)`` with the Gram matrix ``E = x x^T`` (C x C) over
    positions. (N, C, h, w) -> (N, C, h, w).
    """

    def __init__(self):
        super().__init__()
        self.gamma = Scale(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (N, C, h*w)
        energy = flat @ flat.transpose(1, 2)  # (N, C, C)
        # Softmax is shift-invariant, but the paper's subtraction is kept: rounding of large energies is not.
        attention = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
        return self.gamma((attention @ flat).view_as(x)) + x


class DAHead(BaseDecodeHead):
    """Two branches over the selected input, each 3x3 conv -> attention -> 3x3 conv: ``pam`` (positions)
    and ``cam`` (channels); their sum is classified by ``conv_seg`` (the ``pam_cam`` output).

    In training each branch is also classified on its own (``pam_conv_seg``, ``cam_conv_seg``, ``num_classes``
    outputs), and all three outputs are scored with ``loss_decode``.

    Args:
        pam_channels: channels of the position attention's keys and queries.
        **kwargs: :class:`BaseDecodeHead` arguments.

    Input: the backbone's list of features; the selected one is (N, in_channels, h, w).
    Output of ``forward``: the ``pam_cam`` logits (N, out_channels, h, w).
    """

    def __init__(self, pam_channels: int, **kwargs):
        super().__init__(**kwargs)
        self.pam_channels = pam_channels
        self.pam_in_conv = self.conv_block(self.in_channels, self.channels, 3, padding=1)
        self.pam = PositionAttention(self.channels, pam_channels)
        self.pam_out_conv = self.conv_block(self.channels, self.channels, 3, padding=1)
        self.pam_conv_seg = nn.Conv2d(self.channels, self.num_classes, kernel_size=1)

        self.cam_in_conv = self.conv_block(self.in_channels, self.channels, 3, padding=1)
        self.cam = ChannelAttention()
        self.cam_out_conv = self.conv_block(self.channels, self.channels, 3, padding=1)
        self.cam_conv_seg = nn.Conv2d(self.channels, self.num_classes, kernel_size=1)

    def branch_features(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected input -> the position and channel branches' features, each (N, channels, h, w)."""
        x = self.transform_inputs(inputs)
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        return pam_feat, cam_feat

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected input (N, in_channels, h, w) -> summed branch features (N, channels, h, w)."""
        pam_feat, cam_feat = self.branch_features(inputs)
        return pam_feat + cam_feat

    def _classify(self, conv_seg: nn.Conv2d, feat: torch.Tensor) -> torch.Tensor:
        return conv_seg(feat if self.dropout is None else self.dropout(feat))

    def loss(self, inputs: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of the three outputs, each with ``loss_decode``: ``{'pam_cam.loss_ce', 'pam_cam.acc_seg',
        'pam.loss_ce', 'pam.acc_seg', 'cam.loss_ce', 'cam.acc_seg'}`` (loss names from ``loss_decode``)."""
        pam_feat, cam_feat = self.branch_features(inputs)
        # Dropout draws in MMSegmentation's order: pam, cam, then pam_cam.
        pam_logits = self._classify(self.pam_conv_seg, pam_feat)
        cam_logits = self._classify(self.cam_conv_seg, cam_feat)
        outputs = {"pam_cam": self.cls_seg(pam_feat + cam_feat), "pam": pam_logits, "cam": cam_logits}
        return {f"{prefix}.{name}": value for prefix, logits in outputs.items()
                for name, value in head_losses(self, logits, labels).items()}
