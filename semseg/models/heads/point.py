"""PointHead: PointRend's point-wise refinement of a coarse segmentation (Kirillov et al., arXiv:1912.08193)."""

from __future__ import annotations

import torch
from torch import nn

from semseg.models.heads.decode_head import BaseDecodeHead
from semseg.models.losses import accuracy
from semseg.nn import build_activation, build_norm, resize
from semseg.nn.point_sample import point_sample


class PointConvModule(nn.Module):
    """1x1 Conv1d -> optional norm -> optional activation over points (N, C, P): a shared MLP.

    Children named as mmcv's ``ConvModule`` with ``conv_cfg=dict(type='Conv1d')``: ``conv``, the norm by
    its type (a norm that takes (N, C, P), such as GN), ``activate``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict | None, act_cfg: dict | None):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=1, bias=norm_cfg is None)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        self.norm_name = None
        if norm_cfg is not None:
            self.norm_name, norm = build_norm(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        self.activate = build_activation(act_cfg, inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, P) -> (N, out_channels, P)."""
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        return x if self.activate is None else self.activate(x)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Logits (N, C, ...) -> (N, 1, ...): second-best minus best logit, highest where least certain."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 1:2] - top2[:, :1]


class PointHead(BaseDecodeHead):
    """The second stage of PointRend: an MLP over points that reads, at each point, the selected input
    levels (fine-grained features) and the previous stage's logits (coarse prediction) and predicts the
    point's class logits; with ``coarse_pred_each_layer`` the coarse logits are appended to every layer's
    input too.

    Called by :class:`~semseg.models.cascade.CascadeEncoderDecoder` as ``head(inputs, prev_logits)``
    (inference: subdivision) and ``head.loss(inputs, labels, prev_logits)`` (training: point sampling); the
    segmentor gives it ``test_cfg`` (``subdivision_steps``, ``subdivision_num_points``, ``scale_factor``)
    and ``train_cfg`` (``num_points``, ``oversample_ratio``, ``importance_sample_ratio``).

    Args:
        num_fcs: number of point MLP layers (``fcs``), each of ``channels`` outputs.
        coarse_pred_each_layer: append the coarse logits to each layer's output.
        conv_cfg: must be ``dict(type='Conv1d')`` (the MLP is 1x1 Conv1d over points).
        norm_cfg, act_cfg: of the MLP layers.
        **kwargs: :class:`BaseDecodeHead` arguments; ``in_channels`` and ``in_index`` are lists (the inputs
            are always ``'multiple_select'``); ``dropout_ratio`` gives a plain Dropout before ``fc_seg``.

    Input: features (N, in_channels[i], h_i, w_i) and the previous stage's logits (N, num_classes, h, w).
    Output of ``forward``: refined logits (N, num_classes, h * s^k, w * s^k), s = ``scale_factor``,
    k = ``subdivision_steps``.
    """

    def __init__(
        self,
        num_fcs: int = 3,
        coarse_pred_each_layer: bool = True,
        conv_cfg: dict | None = dict(type="Conv1d"),  # noqa: B006 - never mutated
        norm_cfg: dict | None = None,
        act_cfg: dict | None = dict(type="ReLU", inplace=False),  # noqa: B006 - never mutated
        **kwargs,
    ):
        if conv_cfg is None or conv_cfg.get("type") != "Conv1d":
            raise ValueError(f"PointHead: conv_cfg must be dict(type='Conv1d'), got {conv_cfg!r}")
        super().__init__(input_transform="multiple_select", conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                         **kwargs)
        self.num_fcs = num_fcs
        self.coarse_pred_each_layer = coarse_pred_each_layer
        self.train_cfg: dict = {}
        self.test_cfg: dict = {}
        coarse_channels = self.num_classes if coarse_pred_each_layer else 0
        fc_in_channels = sum(self.in_channels) + self.num_classes
        self.fcs = nn.ModuleList()
        for _ in range(num_fcs):
            self.fcs.append(PointConvModule(fc_in_channels, self.channels, norm_cfg, act_cfg))
            fc_in_channels = self.channels + coarse_channels
        self.fc_seg = nn.Conv1d(fc_in_channels, self.num_classes, kernel_size=1)
        nn.init.normal_(self.fc_seg.weight, std=0.01)
        nn.init.zeros_(self.fc_seg.bias)
        del self.conv_seg  # points are classified by fc_seg
        if self.dropout is not None:  # plain Dropout: its input is (N, C, P)
            self.dropout = nn.Dropout(self.dropout.p)

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Dropout, then ``fc_seg``: (N, C, P) -> (N, num_classes, P)."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.fc_seg(feat)

    def point_logits(self, inputs: list[torch.Tensor], prev_logits: torch.Tensor,
                     points: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, P) at ``points`` (N, P, 2), normalized (x, y) in [0, 1]."""
        fine = [point_sample(x, points, align_corners=self.align_corners) for x in self.transform_inputs(inputs)]
        coarse = point_sample(prev_logits, points, align_corners=self.align_corners)
        x = torch.cat([*fine, coarse], dim=1)
        for fc in self.fcs:
            x = fc(x)
            if self.coarse_pred_each_layer:
                x = torch.cat([x, coarse], dim=1)
        return self.cls_seg(x)

    def _cfg(self, cfg: dict, keys: tuple[str, ...], which: str) -> list:
        missing = [key for key in keys if key not in cfg]
        if missing:
            raise KeyError(f"PointHead needs {', '.join(missing)} in the segmentor's {which} (got {dict(cfg)})")
        return [cfg[key] for key in keys]

    def forward(self, inputs: list[torch.Tensor], prev_logits: torch.Tensor) -> torch.Tensor:
        """Subdivision inference: ``subdivision_steps`` times, upsample the logits by ``scale_factor``
        (bilinear) and replace the logits of the ``subdivision_num_points`` most uncertain pixels (or all)
        by the point MLP's prediction at their centres. Features and ``prev_logits`` (N, num_classes, h, w)
        -> (N, num_classes, H', W')."""
        steps, num_points, scale_factor = self._cfg(
            self.test_cfg, ("subdivision_steps", "subdivision_num_points", "scale_factor"), "test_cfg")
        logits = prev_logits
        for _ in range(steps):
            logits = resize(logits, scale_factor=scale_factor, mode="bilinear", align_corners=self.align_corners)
            n, c, h, w = logits.shape
            scores = uncertainty(logits).view(n, h * w)
            indices = scores.topk(min(num_points, h * w), dim=1).indices  # (N, P)
            # pixel centres, (j + 1/2) / w written as j * (1 / w) + 1 / (2w): MMSegmentation's float32 values
            points = torch.stack([(indices % w) * (1.0 / w) + 0.5 / w, (indices // w) * (1.0 / h) + 0.5 / h], dim=2)
            refined = self.point_logits(inputs, prev_logits, points)
            logits = logits.flatten(2).scatter(2, indices.unsqueeze(1).expand(-1, c, -1), refined).view(n, c, h, w)
        return logits

    def sample_train_points(self, logits: torch.Tensor) -> torch.Tensor:
        """Training points (N, num_points, 2) in [0, 1]: of ``num_points * oversample_ratio`` uniform random
        points, the ``importance_sample_ratio * num_points`` most uncertain (logits read bilinearly at each
        point, ``align_corners=False`` as in MMSegmentation), then uniform random points for the rest.

        The random draws are MMSegmentation's, in its order (two ``torch.rand`` calls), so that a seeded
        run samples the same points.
        """
        num_points, oversample_ratio, importance_ratio = self._cfg(
            self.train_cfg, ("num_points", "oversample_ratio", "importance_sample_ratio"), "train_cfg")
        if oversample_ratio < 1 or not 0 <= importance_ratio <= 1:
            raise ValueError(f"PointHead: need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
                             f"{oversample_ratio} and {importance_ratio}")
        n = logits.shape[0]
        candidates = torch.rand(n, int(num_points * oversample_ratio), 2, device=logits.device)
        scores = uncertainty(point_sample(logits, candidates))[:, 0]  # (N, P * oversample_ratio)
        num_uncertain = int(importance_ratio * num_points)
        indices = scores.topk(num_uncertain, dim=1).indices
        points = candidates.gather(1, indices.unsqueeze(2).expand(-1, -1, 2))
        if num_points > num_uncertain:
            extra = torch.rand(n, num_points - num_uncertain, 2, device=logits.device)
            points = torch.cat([points, extra], dim=1)
        return points

    def loss(self, inputs: list[torch.Tensor], labels: torch.Tensor,
             prev_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses at sampled points: features, labels (N, H, W) long and the previous stage's logits ->
        ``{'pointloss_ce': ..., 'acc_point': ...}`` (MMSegmentation's names); labels read at the nearest pixel.
        Losses of the same name are summed."""
        with torch.no_grad():
            points = self.sample_train_points(prev_logits)
        logits = self.point_logits(inputs, prev_logits, points)
        point_labels = point_sample(labels.unsqueeze(1).float(), points, mode="nearest",
                                    align_corners=self.align_corners)[:, 0].long()
        loss_modules = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        losses: dict[str, torch.Tensor] = {}
        for loss_module in loss_modules:
            name = "point" + loss_module.loss_name
            value = loss_module(logits, point_labels, ignore_index=self.ignore_index)
            losses[name] = losses[name] + value if name in losses else value
        losses["acc_point"] = accuracy(logits, point_labels, ignore_index=self.ignore_index)
        return losses
