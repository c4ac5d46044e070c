"""EncoderDecoder: backbone -> (neck) -> decode head (+ auxiliary heads), with loss and inference."""

from __future__ import annotations

import torch
from torch import nn

from semseg.build import build
from semseg.models.inference import slide_inference, whole_inference
from semseg.nn import resize


class EncoderDecoder(nn.Module):
    """The segmentor of ``dict(type='EncoderDecoder', ...)``; child names are the checkpoint's prefixes
    (``backbone.``, ``neck.``, ``decode_head.``, ``auxiliary_head.`` / ``auxiliary_head.0.``).

    ``test_cfg``: ``dict(mode='whole')`` or ``dict(mode='slide', crop_size=(h, w), stride=(h, w))``.
    """

    def __init__(
        self,
        backbone: dict,
        decode_head: dict,
        neck: dict | None = None,
        auxiliary_head: dict | list[dict] | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        data_preprocessor: dict | None = None,
        pretrained: str | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__()
        self.pretrained = pretrained
        self.backbone = build("backbone", backbone)
        if neck is not None:
            self.neck = build("neck", neck)
        self.decode_head = build("head", decode_head)
        if isinstance(auxiliary_head, (list, tuple)):
            self.auxiliary_head = nn.ModuleList(build("head", cfg) for cfg in auxiliary_head)
        elif auxiliary_head is not None:
            self.auxiliary_head = build("head", auxiliary_head)
        preprocessor_cfg = data_preprocessor or dict(type="SegDataPreProcessor")
        self.data_preprocessor = build("data_preprocessor", preprocessor_cfg)
        self.train_cfg = dict(train_cfg or {})
        self.test_cfg = dict(test_cfg or {"mode": "whole"})

    @property
    def with_neck(self) -> bool:
        return hasattr(self, "neck")

    @property
    def output_head(self) -> nn.Module:
        """The decode head whose logits are the model's output (a cascade's last stage)."""
        return self.decode_head

    @property
    def out_channels(self) -> int:
        return self.output_head.out_channels

    @property
    def num_classes(self) -> int:
        return self.output_head.num_classes

    @property
    def align_corners(self) -> bool:
        return self.output_head.align_corners

    @property
    def ignore_index(self) -> int:
        """The label value that carries no loss (the trainer's label check reads it here)."""
        return self.output_head.ignore_index

    def extract_feat(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, 3, H, W) -> multi-level features from the backbone (and neck)."""
        features = self.backbone(x)
        return self.neck(features) if self.with_neck else features

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Multi-level features -> logits (N, C, h, w) at the decode head's resolution."""
        return self.decode_head(features)

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) normalized -> logits (N, C, H, W) resized to the input size."""
        logits = self.decode(self.extract_feat(x))
        return resize(logits, size=x.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def decode_losses(self, features: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decode head's training losses, keyed ``decode.<name>``."""
        return prefixed("decode", self.decode_head.loss(features, labels))

    def auxiliary_losses(self, features: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The auxiliary heads' losses: ``aux.<name>`` for one head, ``aux_<i>.<name>`` for a list."""
        if not hasattr(self, "auxiliary_head"):
            return {}
        if isinstance(self.auxiliary_head, nn.ModuleList):
            losses = {}
            for index, head in enumerate(self.auxiliary_head):
                losses.update(prefixed(f"aux_{index}", head.loss(features, labels)))
            return losses
        return prefixed("aux", self.auxiliary_head.loss(features, labels))

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (N, 3, H, W), labels (N, H, W) long -> ``decode.loss_ce``, ``decode.acc_seg``, ``aux.*``."""
        features = self.extract_feat(x)
        return {**self.decode_losses(features, labels), **self.auxiliary_losses(features, labels)}

    def inference(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) at x's size by the strategy ``test_cfg['mode']`` names."""
        mode = self.test_cfg.get("mode", "whole")
        if mode == "whole":
            return whole_inference(self, x)
        if mode == "slide":
            if "crop_size" not in self.test_cfg or "stride" not in self.test_cfg:
                raise KeyError("test_cfg mode='slide' needs 'crop_size' and 'stride'")
            return slide_inference(self, x, self.test_cfg["crop_size"], self.test_cfg["stride"])
        raise ValueError(f"test_cfg mode must be 'whole' or 'slide', got {mode!r}")

    def predict_labels(self, scores: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
        """Logits (or, with ``probabilities``, class probabilities) (N, C, H, W) -> labels (N, H, W).

        Argmax over classes; a one-channel head thresholds the sigmoid at the output head's ``threshold``.
        """
        if scores.shape[1] == 1:
            probs = scores if probabilities else scores.sigmoid()
            return (probs.squeeze(1) > self.output_head.threshold).long()
        return scores.argmax(dim=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """``model(x)`` is :meth:`inference` (what export runs); ``model(x, labels)`` is :meth:`loss`
        (so DistributedDataParallel, which synchronizes through ``forward``, can train it)."""
        return self.inference(x) if labels is None else self.loss(x, labels)


def prefixed(prefix: str, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{'loss_ce': v}`` -> ``{'<prefix>.loss_ce': v}`` (MMSegmentation's loss key names)."""
    return {f"{prefix}.{key}": value for key, value in losses.items()}
