"""EncoderDecoder: backbone -> (neck) -> decode head (+ auxiliary heads), with loss and inference."""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from semseg.build import build
from semseg.models.inference import DEFAULT_SLIDE_BATCH_SIZE, autocast, slide_inference, whole_or_slide
from semseg.models.summary import summarize, summary_html
from semseg.nn import resize


class EncoderDecoder(nn.Module):
    """The segmentor of ``dict(type='EncoderDecoder', ...)``; child names are the checkpoint's prefixes
    (``backbone.``, ``neck.``, ``decode_head.``, ``auxiliary_head.`` / ``auxiliary_head.0.``).

    ``test_cfg``: ``dict(mode='whole')`` or ``dict(mode='slide', crop_size=(h, w), stride=(h, w))``; slide
    also reads ``batch_size`` (crops per forward pass), ``accumulate_device`` and ``accumulate_dtype``
    (where the image-sized logits buffer lives), see :func:`~semseg.models.inference.slide_inference`.

    Inference options (plain attributes; ``init_model`` sets them, all off by default):
        precision: ``'fp32'``, ``'bf16'`` or ``'fp16'`` (CUDA): the network runs under autocast at that
            precision; its logits are cast to float32 before every resize, softmax and argmax.
        channels_last: feed the network channels-last inputs (its weights should be channels-last too).
        use_inference_mode: run :meth:`inference` under ``torch.inference_mode`` (no autograd records).
        compile_seconds: with :meth:`compile_network`, the duration of the first (compiling) call.
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
        self.decode_head = self.build_decode_head(decode_head)
        if isinstance(auxiliary_head, (list, tuple)):
            self.auxiliary_head = nn.ModuleList(build("head", cfg) for cfg in auxiliary_head)
        elif auxiliary_head is not None:
            self.auxiliary_head = build("head", auxiliary_head)
        preprocessor_cfg = data_preprocessor or dict(type="SegDataPreProcessor")
        self.data_preprocessor = build("data_preprocessor", preprocessor_cfg)
        self.train_cfg = dict(train_cfg or {})
        self.test_cfg = dict(test_cfg or {"mode": "whole"})
        self.precision = "fp32"
        self.channels_last = False
        self.use_inference_mode = False
        self.compile_seconds: float | None = None
        self._compiled_network = None
        self._freeze_weights = False

    @property
    def train_cfg(self) -> dict:
        return self._train_cfg

    @train_cfg.setter
    def train_cfg(self, cfg: dict) -> None:
        self._train_cfg = cfg
        for head in self.heads():
            head.train_cfg = cfg

    @property
    def test_cfg(self) -> dict:
        """The inference settings; assigning a new dict hands it to every head as well."""
        return self._test_cfg

    @test_cfg.setter
    def test_cfg(self, cfg: dict) -> None:
        self._test_cfg = cfg
        for head in self.heads():
            head.test_cfg = cfg

    def build_decode_head(self, cfg: dict) -> nn.Module:
        return build("head", cfg)

    def heads(self) -> list[nn.Module]:
        """Every decode and auxiliary head; each sees the segmentor's ``train_cfg`` / ``test_cfg`` dicts as
        its attributes of those names (PointRend's head samples points by them)."""
        heads = []
        for name in ("decode_head", "auxiliary_head"):
            module = getattr(self, name, None)
            if module is not None:
                heads.extend(module if isinstance(module, nn.ModuleList) else [module])
        return heads

    summary = summarize  # model.summary(): backbone, heads, classes, output, parameters
    _repr_html_ = summary_html  # Jupyter: the summary table, with the module tree folded under it

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

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) normalized -> logits (N, C, h, w) at the decode head's resolution."""
        return self.decode(self.extract_feat(x))

    def compile_network(self, freeze_weights: bool = False, **options) -> None:
        """Run :meth:`network` through ``torch.compile(**options)`` from now on (inference only: ``loss``
        stays eager). The first call compiles; its duration is kept as ``compile_seconds``.

        ``freeze_weights``: inductor treats the weights as constants (folds and prepacks them: 0.88x the
        eager fp32 time of PSPNet R50-D8 on a 2-core CPU, not bit-exact); the weights must not change
        afterwards. Inductor reads this setting at compile time only from its global config, so each
        compiled call runs inside a patch of it.
        """
        self._compiled_network = torch.compile(self.network, **options)
        self._freeze_weights = freeze_weights
        self.compile_seconds = None

    def _run_network(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled_network is None:
            return self.network(x)
        freezing = contextlib.nullcontext()
        if self._freeze_weights:
            import torch._inductor.config as inductor_config

            freezing = inductor_config.patch(freezing=True)
        with freezing:
            if self.compile_seconds is not None:
                return self._compiled_network(x)
            start = time.perf_counter()
            logits = self._compiled_network(x)
        self.compile_seconds = time.perf_counter() - start
        return logits

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) normalized -> logits (N, C, H, W) float32, resized to the input size.

        The network runs at ``self.precision`` (autocast) and, with ``self.channels_last``, on a
        channels-last input; the resize runs in float32.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, x.device):
            logits = self._run_network(x)
        return resize(logits.float(), size=x.shape[2:], mode="bilinear", align_corners=self.align_corners)

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
        """Logits (N, C, H, W) at x's size by the strategy ``test_cfg['mode']`` names.

        Whole inference may fall back to slide inference for large inputs (``test_cfg`` keys
        ``max_whole_pixels`` and ``fallback_slide``, see :func:`~semseg.models.inference.whole_or_slide`).
        """
        mode = self.test_cfg.get("mode", "whole")
        if mode not in ("whole", "slide"):
            raise ValueError(f"test_cfg mode must be 'whole' or 'slide', got {mode!r}")
        if mode == "slide" and ("crop_size" not in self.test_cfg or "stride" not in self.test_cfg):
            raise KeyError("test_cfg mode='slide' needs 'crop_size' and 'stride'")
        with torch.inference_mode() if self.use_inference_mode else contextlib.nullcontext():
            if mode == "whole":
                return whole_or_slide(self, x, self.test_cfg)
            cfg = self.test_cfg
            return slide_inference(self, x, cfg["crop_size"], cfg["stride"],
                                   batch_size=cfg.get("batch_size", DEFAULT_SLIDE_BATCH_SIZE),
                                   accumulate_device=cfg.get("accumulate_device"),
                                   accumulate_dtype=cfg.get("accumulate_dtype"))

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
