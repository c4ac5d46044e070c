"""What every decode head shares: input selection, conv blocks, dropout, the 1x1 classifier, its losses.

The head contract: ``forward(inputs)`` always returns the logits used for inference (N, out_channels,
h, w); ``loss(inputs, labels)`` returns the head's training losses as a dict of named tensors. A head that
trains on more than its inference logits (DANet's three outputs, EncNet's SE loss) overrides ``loss``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from semseg.build import build
from semseg.models.losses import head_losses
from semseg.nn import ConvModule, resize

DEFAULT_LOSS = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)


class BaseDecodeHead(nn.Module):
    """Base of all decode heads; a subclass computes features in ``forward_features`` (or overrides
    ``forward``), and overrides ``loss`` when it trains on more than its logits.

    Args (the config's keys, as in MMSegmentation):
        in_channels: channels of the selected input(s); a list with ``input_transform`` set.
        channels: channels of the features fed to ``conv_seg``.
        num_classes: number of classes; ``out_channels`` defaults to it (1 means binary with
            ``threshold``, sigmoid loss).
        in_index: which backbone/neck outputs the head reads (int, or list with ``input_transform``).
        input_transform: ``None`` (one input), ``'resize_concat'`` (resize all to the first's size and
            concatenate) or ``'multiple_select'`` (a list of inputs).
        dropout_ratio: Dropout2d before ``conv_seg``.
        loss_decode: one loss config or a list of them; their values are summed per ``loss_name``.
        sampler: optional pixel sampler config (``OHEMPixelSampler``) that weights the loss per pixel.
        ignore_index: label value that carries no loss.
        align_corners: used when resizing inputs and logits.
    """

    def __init__(
        self,
        in_channels: int | list[int],
        channels: int,
        *,
        num_classes: int,
        out_channels: int | None = None,
        threshold: float | None = None,
        dropout_ratio: float = 0.1,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = dict(type="ReLU"),  # noqa: B006 - never mutated
        in_index: int | list[int] = -1,
        input_transform: str | None = None,
        loss_decode: dict | list[dict] = DEFAULT_LOSS,
        ignore_index: int = 255,
        sampler: dict | None = None,
        align_corners: bool = False,
        init_cfg: dict | list | None = None,
    ):
        super().__init__()
        self._init_inputs(in_channels, in_index, input_transform)
        self.channels = channels
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.num_classes = num_classes

        if out_channels is None:
            if num_classes == 2:
                warnings.warn("num_classes=2 with out_channels unset: using 2 output channels with softmax; "
                              "set out_channels=1 for a single sigmoid channel", stacklevel=2)
            out_channels = num_classes
        if out_channels != num_classes and out_channels != 1:
            raise ValueError(f"out_channels must be num_classes ({num_classes}) or 1, got {out_channels}")
        if out_channels == 1 and threshold is None:
            threshold = 0.3
            warnings.warn("out_channels=1 without threshold: using threshold=0.3", stacklevel=2)
        self.out_channels = out_channels
        self.threshold = threshold

        loss_cfgs = loss_decode if isinstance(loss_decode, (list, tuple)) else [loss_decode]
        losses = [build("loss", cfg) for cfg in loss_cfgs]
        # A single loss is a plain attribute in MMSegmentation, a list a ModuleList: keep both shapes.
        self.loss_decode = nn.ModuleList(losses) if isinstance(loss_decode, (list, tuple)) else losses[0]
        self.sampler = None if sampler is None else build("sampler", sampler, ignore_index=ignore_index)

        self.conv_seg = nn.Conv2d(channels, out_channels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def _init_inputs(self, in_channels, in_index, input_transform) -> None:
        if input_transform not in (None, "resize_concat", "multiple_select"):
            raise ValueError(f"input_transform must be None, 'resize_concat' or 'multiple_select', "
                             f"got {input_transform!r}")
        self.input_transform = input_transform
        self.in_index = in_index
        if input_transform is None:
            if not isinstance(in_channels, int) or not isinstance(in_index, int):
                raise TypeError("without input_transform, in_channels and in_index must be ints")
            self.in_channels = in_channels
            return
        if not isinstance(in_channels, (list, tuple)) or not isinstance(in_index, (list, tuple)):
            raise TypeError(f"input_transform={input_transform!r} needs lists for in_channels and in_index")
        if len(in_channels) != len(in_index):
            raise ValueError(f"in_channels {in_channels} and in_index {in_index} differ in length")
        self.in_channels = sum(in_channels) if input_transform == "resize_concat" else list(in_channels)

    def conv_block(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> ConvModule:
        """A :class:`ConvModule` with the head's ``conv_cfg`` / ``norm_cfg`` / ``act_cfg`` (``kwargs`` may
        override them, or pass ``padding``, ``dilation``, ...)."""
        cfgs = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        return ConvModule(in_channels, out_channels, kernel_size, **{**cfgs, **kwargs})

    def transform_inputs(self, inputs: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Select (and for ``resize_concat`` resize to the first one's size and concatenate) inputs."""
        if self.input_transform is None:
            return inputs[self.in_index]
        selected = [inputs[i] for i in self.in_index]
        if self.input_transform == "multiple_select":
            return selected
        size = selected[0].shape[2:]
        resized = [resize(x, size=size, mode="bilinear", align_corners=self.align_corners) for x in selected]
        return torch.cat(resized, dim=1)

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Dropout, then the 1x1 classifier: (N, channels, h, w) -> (N, out_channels, h, w)."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def forward_features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Features before ``cls_seg``: (N, channels, h, w)."""
        raise NotImplementedError

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Multi-level features -> logits (N, out_channels, h, w) at the head's working resolution."""
        return self.cls_seg(self.forward_features(inputs))

    def loss(self, inputs: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses: multi-level features and labels (N, H, W) long -> ``{'loss_ce': ..., 'acc_seg': ...}``.

        The default scores ``forward``'s logits with ``loss_decode`` (see :func:`head_losses`).
        """
        return head_losses(self, self(inputs), labels)
