"""EncHead: context encoding with channel re-weighting and the semantic encoding loss (EncNet,
arXiv:1803.08904)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.build import build
from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.models.losses import head_losses
from semseg.nn import ConvModule, build_norm, resize
from semseg.nn.encoding import Encoding

DEFAULT_SE_LOSS = dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=0.2)

# The codes (N, num_codes, channels) are normalized over num_codes: BN and IN take their 1-d forms there,
# as in MMSegmentation's EncModule (SyncBN and GN take inputs of any rank).
_ONE_D = {nn.BatchNorm2d: nn.BatchNorm1d, nn.InstanceNorm2d: nn.InstanceNorm1d}


def build_norm_1d(norm_cfg: dict | None, num_features: int) -> nn.Module:
    """The norm of ``norm_cfg`` (BN1d when None) for (N, num_features, L) inputs."""
    layer = build_norm(norm_cfg or dict(type="BN"), num_features)[1]
    one_d = _ONE_D.get(type(layer))
    if one_d is None:
        return layer
    rebuilt = one_d(num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                    track_running_stats=layer.track_running_stats)
    for new, old in zip(rebuilt.parameters(), layer.parameters(), strict=True):
        new.requires_grad = old.requires_grad
    return rebuilt


def class_presence(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Which classes each image holds, the SE loss's targets: labels (N, H, W) -> (N, num_classes) in {0, 1}.

    Values outside ``[0, num_classes)`` (``ignore_index``) count for no class.
    """
    valid = (labels >= 0) & (labels < num_classes)
    index = torch.where(valid, labels, num_classes).flatten(1)  # invalid pixels land in an extra column
    present = labels.new_zeros(labels.size(0), num_classes + 1).scatter_(1, index, 1)
    return present[:, :num_classes]


class EncModule(nn.Module):
    """Encode the features against learnt codewords, then re-weight their channels by the encoding.

    Input (N, C, h, w) -> (codes (N, C): the mean encoded feature, output (N, C, h, w):
    relu(x * (1 + sigmoid(fc(codes))))).
    """

    def __init__(self, in_channels: int, num_codes: int, conv_cfg: dict | None, norm_cfg: dict | None,
                 act_cfg: dict | None):
        super().__init__()
        self.encoding_project = ConvModule(in_channels, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                           act_cfg=act_cfg)
        self.encoding = nn.Sequential(Encoding(in_channels, num_codes), build_norm_1d(norm_cfg, num_codes),
                                      nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(in_channels, in_channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encoding(self.encoding_project(x)).mean(dim=1)  # (N, num_codes, C) -> (N, C)
        gamma = self.fc(codes)[:, :, None, None]
        return codes, F.relu(x + x * gamma)


class EncHead(BaseDecodeHead):
    """A 3x3 ``bottleneck`` on the last input (optionally fused with 1x1 ``lateral_convs`` of the others),
    then the :class:`EncModule`; with ``use_se_loss``, ``se_layer`` predicts from the encoding which classes
    the image holds, trained by ``loss_se_decode`` (reported as ``loss_se``).

    Args:
        num_codes: codewords of the encoding layer.
        use_se_loss: add the semantic encoding loss in training (does not change ``forward``).
        add_lateral: fuse all selected inputs, not only the last one.
        loss_se_decode: loss config of the SE branch (binary cross entropy on class presence).
        **kwargs: :class:`BaseDecodeHead` arguments; the inputs are always ``'multiple_select'``ed, so
            ``in_channels`` and ``in_index`` are lists.

    Input: the backbone's list of features. Output of ``forward``: (N, out_channels, h, w) at the last
    selected input's size.
    """

    def __init__(
        self,
        num_codes: int = 32,
        use_se_loss: bool = True,
        add_lateral: bool = False,
        loss_se_decode: dict = DEFAULT_SE_LOSS,
        **kwargs,
    ):
        transform = kwargs.pop("input_transform", "multiple_select")
        if transform != "multiple_select":
            raise ValueError(f"EncHead always uses input_transform='multiple_select', got {transform!r}")
        super().__init__(input_transform=transform, **kwargs)
        self.num_codes = num_codes
        self.use_se_loss = use_se_loss
        self.add_lateral = add_lateral
        self.bottleneck = self.conv_block(self.in_channels[-1], self.channels, 3, padding=1)
        if add_lateral:
            self.lateral_convs = nn.ModuleList(self.conv_block(c, self.channels, 1) for c in self.in_channels[:-1])
            self.fusion = self.conv_block(len(self.in_channels) * self.channels, self.channels, 3, padding=1)
        self.enc_module = EncModule(self.channels, num_codes, self.conv_cfg, self.norm_cfg, self.act_cfg)
        if use_se_loss:
            self.loss_se_decode = build("loss", dict(loss_se_decode))
            self.se_layer = nn.Linear(self.channels, self.num_classes)

    def encode(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected inputs -> (codes (N, channels), features (N, channels, h, w))."""
        inputs = self.transform_inputs(inputs)
        feat = self.bottleneck(inputs[-1])
        if self.add_lateral:
            laterals = [resize(conv(x), size=feat.shape[2:], mode="bilinear", align_corners=self.align_corners)
                        for conv, x in zip(self.lateral_convs, inputs[:-1], strict=True)]
            feat = self.fusion(torch.cat([feat, *laterals], dim=1))
        return self.enc_module(feat)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Selected inputs -> (N, channels, h, w)."""
        return self.encode(inputs)[1]

    def loss(self, inputs: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss_decode`` terms and ``acc_seg`` on the logits, plus ``loss_se`` with ``use_se_loss``."""
        codes, feat = self.encode(inputs)
        losses = head_losses(self, self.cls_seg(feat), labels)
        if self.use_se_loss:
            targets = class_presence(labels, self.num_classes)
            losses["loss_se"] = self.loss_se_decode(self.se_layer(codes), targets)
        return losses
