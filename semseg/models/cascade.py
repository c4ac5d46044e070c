"""CascadeEncoderDecoder: decode heads in stages, each after the first refining the previous one's logits."""

from __future__ import annotations

import torch
from torch import nn

from semseg.build import build
from semseg.models.segmentor import EncoderDecoder, prefixed


class CascadeEncoderDecoder(EncoderDecoder):
    """The segmentor of ``dict(type='CascadeEncoderDecoder', num_stages=2, decode_head=[...])`` (OCRNet,
    PointRend). Checkpoint keys ``decode_head.<i>.*``; training losses ``decode_<i>.*``.

    A stage ``i >= 1`` head is called as ``head(features, prev_logits)`` and ``head.loss(features, labels,
    prev_logits)``. Whole, slide and TTA inference are the base class's: they run :meth:`decode`.
    """

    def __init__(self, num_stages: int, decode_head: list[dict], **kwargs):
        self.num_stages = num_stages
        super().__init__(decode_head=decode_head, **kwargs)

    def build_decode_head(self, cfg: list[dict]) -> nn.ModuleList:
        if not isinstance(cfg, (list, tuple)) or len(cfg) != self.num_stages:
            got = f"{len(cfg)} dicts" if isinstance(cfg, (list, tuple)) else type(cfg).__name__
            raise ValueError(f"CascadeEncoderDecoder: decode_head must be a list of num_stages={self.num_stages} "
                             f"head dicts, got {got}")
        return nn.ModuleList(build("head", head_cfg) for head_cfg in cfg)

    @property
    def output_head(self) -> nn.Module:
        return self.decode_head[-1]

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Features -> the last stage's logits (N, C, h, w)."""
        logits = self.decode_head[0](features)
        for head in self.decode_head[1:]:
            logits = head(features, logits)
        return logits

    def decode_losses(self, features: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each stage's losses, keyed ``decode_<i>.<name>``; stage ``i`` refines stage ``i - 1``'s logits.

        As MMSegmentation does, the first stage runs once for its loss and once more for the logits the
        second stage refines (in training mode both times, so BatchNorm statistics move as the oracle's do).
        """
        losses = prefixed("decode_0", self.decode_head[0].loss(features, labels))
        logits = self.decode_head[0](features)
        for index in range(1, self.num_stages):
            head = self.decode_head[index]
            losses.update(prefixed(f"decode_{index}", head.loss(features, labels, logits)))
            if index + 1 < self.num_stages:
                logits = head(features, logits)
        return losses
