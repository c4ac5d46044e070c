"""Segmentation losses (cross entropy, Dice) and the pixel accuracy reported beside them.

Reductions follow MMSegmentation so loss values carry over: ``'mean'`` averages over *all* pixels
(ignored ones contribute zero) unless ``avg_non_ignore=True``, which averages over non-ignored pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semseg.nn import resize

_EPS = torch.finfo(torch.float32).eps


def reduce_loss(
    loss: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Weight an element-wise loss, then reduce it (``avg_factor`` replaces the element count)."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        return loss.sum() if reduction == "sum" else loss
    if reduction == "mean":
        return loss.sum() / (avg_factor + _EPS)
    if reduction == "none":
        return loss
    raise ValueError("avg_factor cannot be used with reduction='sum'")


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | None = None,
    ignore_index: int = -100,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """Softmax cross entropy. logits (N, C, H, W), labels (N, H, W), weight (N, H, W) per pixel.

    With ``class_weight``, ``'mean'`` divides by the summed class weights of the pixels' labels (as
    MMSegmentation does); an ignored pixel counts 1 there, or 0 with ``avg_non_ignore`` (MMSegmentation
    raises an IndexError on ignored pixels in that case).
    """
    loss = F.cross_entropy(logits, labels, weight=class_weight, reduction="none", ignore_index=ignore_index)
    if avg_factor is None and reduction == "mean" and class_weight is not None:
        ignored = labels == ignore_index
        pixel_weight = class_weight[torch.where(ignored, 0, labels)]
        avg_factor = torch.where(ignored, 0.0 if avg_non_ignore else 1.0, pixel_weight).sum()
    elif avg_factor is None and avg_non_ignore and reduction == "mean":
        avg_factor = labels.numel() - (labels == ignore_index).sum()  # a tensor: no host sync
    if weight is not None:
        weight = weight.float()
    return reduce_loss(loss, weight, reduction, avg_factor)


def binary_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | None = None,
    ignore_index: int = -100,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """Sigmoid cross entropy; ignored pixels get zero weight.

    logits (N, 1, H, W) with labels (N, H, W) in {0, 1} (binary segmentation), or logits (N, C, H, W)
    with class labels (one-hot expanded), or logits and labels of the same shape.
    """
    if logits.dim() == 4 and logits.size(1) == 1 and labels.dim() == 3:
        valid_labels = labels[labels != ignore_index]
        if valid_labels.numel() and valid_labels.max() > 1:
            raise ValueError("a single-channel (sigmoid) head needs labels in {0, 1} (and ignore_index)")
        logits = logits.squeeze(1)
    valid = (labels >= 0) & (labels != ignore_index)
    if logits.dim() != labels.dim():
        num_classes = logits.size(1)
        one_hot = F.one_hot(torch.where(valid, labels, 0), num_classes).movedim(-1, 1)
        targets = one_hot * valid.unsqueeze(1)
        valid = valid.unsqueeze(1).expand_as(logits)
        if weight is not None:
            weight = weight.unsqueeze(1).expand_as(logits)
    else:
        targets = labels
    valid = valid.float()
    weight = valid if weight is None else weight * valid
    if reduction == "mean" and avg_factor is None and avg_non_ignore:
        avg_factor = valid.sum()
    loss = F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=class_weight, reduction="none")
    return reduce_loss(loss, weight, reduction, avg_factor)


class CrossEntropyLoss(nn.Module):
    """Cross entropy as configured by ``dict(type='CrossEntropyLoss', ...)``.

    Args:
        use_sigmoid: binary cross entropy on sigmoid outputs (for ``out_channels=1`` heads).
        class_weight: per-class weights (list) multiplied into each pixel's loss.
        loss_weight: factor on the final loss.
        loss_name: the key the loss is reported under (``decode.loss_ce``).
        avg_non_ignore: average over non-ignored pixels instead of all pixels.
    """

    def __init__(
        self,
        use_sigmoid: bool = False,
        use_mask: bool = False,
        reduction: str = "mean",
        class_weight: list[float] | str | None = None,
        loss_weight: float = 1.0,
        loss_name: str = "loss_ce",
        avg_non_ignore: bool = False,
    ):
        super().__init__()
        if use_mask:
            raise NotImplementedError("CrossEntropyLoss(use_mask=True) is not supported yet")
        if isinstance(class_weight, str):
            raise ValueError("class_weight must be a list of floats (file paths are not read)")
        self.use_sigmoid = use_sigmoid
        self.reduction = reduction
        self.class_weight = class_weight
        self.loss_weight = loss_weight
        self.avg_non_ignore = avg_non_ignore
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
        ignore_index: int = -100,
    ) -> torch.Tensor:
        """logits (N, C, H, W), labels (N, H, W) long -> scalar (or per-pixel with reduction 'none')."""
        reduction = reduction_override or self.reduction
        class_weight = None
        if self.class_weight is not None:
            class_weight = logits.new_tensor(self.class_weight)
        loss_fn = binary_cross_entropy if self.use_sigmoid else cross_entropy
        loss = loss_fn(logits, labels, weight, class_weight=class_weight, reduction=reduction,
                       avg_factor=avg_factor, ignore_index=ignore_index, avg_non_ignore=self.avg_non_ignore)
        return self.loss_weight * loss


def dice_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-3,
    reduction: str = "mean",
    naive_dice: bool = False,
    avg_factor: float | None = None,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Dice loss per image, then reduced. probs and targets (N, C, H, W); weight (N,) per image.

    V-Net form ``1 - 2|PT| / (|P|^2 + |T|^2)`` (``eps`` added to each squared sum), or with ``naive_dice``
    ``1 - (2|PT| + eps) / (|P| + |T| + eps)``; the sums run over all classes and pixels of an image. A class
    *channel* numbered ``ignore_index`` (if there is one) is left out, as in MMSegmentation.
    """
    num_classes = probs.size(1)
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        if num_classes == 1:
            raise ValueError(f"DiceLoss: ignore_index {ignore_index} leaves out the only class channel")
        keep = torch.arange(num_classes, device=probs.device) != ignore_index
        probs, targets = probs[:, keep], targets[:, keep]
    probs, targets = probs.flatten(1), targets.flatten(1).to(probs.dtype)
    overlap = (probs * targets).sum(1)
    if naive_dice:
        dice = (2 * overlap + eps) / (probs.sum(1) + targets.sum(1) + eps)
    else:
        dice = 2 * overlap / (((probs * probs).sum(1) + eps) + ((targets * targets).sum(1) + eps))
    if weight is not None and weight.shape != dice.shape:
        raise ValueError(f"DiceLoss: weight must hold one value per image {tuple(dice.shape)}, "
                         f"got {tuple(weight.shape)} (a per-pixel sampler does not apply to it)")
    return reduce_loss(1 - dice, weight, reduction, avg_factor)


class DiceLoss(nn.Module):
    """Dice loss as configured by ``dict(type='DiceLoss', ...)`` (MMSegmentation 1.2.2's definition).

    Class labels (N, H, W) become one-hot targets (N, C, H, W); a label outside ``0..C-1`` (``255``) gets an
    all-zero target row, so an ignored pixel adds nothing to the overlap and to ``|T|`` but its predicted
    probabilities still count in ``|P|`` (MMSegmentation does the same); negative labels count as class 0.

    Args:
        use_sigmoid: sigmoid per channel (else softmax over channels, none for a single channel).
        activate: apply that activation (False: the inputs already are probabilities).
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` over the images of the batch.
        naive_dice: first powers in the denominator (see :func:`dice_loss`).
        loss_weight: factor on the final loss.
        ignore_index: a class *channel* left out of the loss (255 by default: none).
        eps: smoothing term.
        loss_name: the key the loss is reported under (``decode.loss_dice``).
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        activate: bool = True,
        reduction: str = "mean",
        naive_dice: bool = False,
        loss_weight: float = 1.0,
        ignore_index: int | None = 255,
        eps: float = 1e-3,
        loss_name: str = "loss_dice",
    ):
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"DiceLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.use_sigmoid = use_sigmoid
        self.activate = activate
        self.reduction = reduction
        self.naive_dice = naive_dice
        self.loss_weight = loss_weight
        self.ignore_index = ignore_index
        self.eps = eps
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
        ignore_index: int = 255,
    ) -> torch.Tensor:
        """logits (N, C, H, W); labels (N, H, W) long, or targets shaped like logits -> scalar (or (N,)).

        ``ignore_index`` is accepted for the decode head's call and not used: labels outside the classes
        are ignored by the one-hot encoding and ``self.ignore_index`` names a channel (as in MMSegmentation).
        """
        del ignore_index
        if reduction_override not in (None, "none", "mean", "sum"):
            raise ValueError(f"DiceLoss: unknown reduction_override {reduction_override!r}")
        targets = labels
        if logits.shape != labels.shape:
            classes = torch.arange(logits.size(1), device=labels.device).view(1, -1, 1, 1)
            targets = labels.clamp(min=0).unsqueeze(1) == classes  # labels >= C match no class
        probs = logits
        if self.activate and self.use_sigmoid:
            probs = logits.sigmoid()
        elif self.activate and logits.size(1) > 1:
            probs = logits.softmax(dim=1)
        loss = dice_loss(probs, targets, weight, eps=self.eps, reduction=reduction_override or self.reduction,
                         naive_dice=self.naive_dice, avg_factor=avg_factor, ignore_index=self.ignore_index)
        return self.loss_weight * loss


def accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Top-1 pixel accuracy in percent over non-ignored pixels. logits (N, C, H, W), labels (N, H, W)."""
    predicted = logits.argmax(dim=1)
    valid = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    correct = (predicted == labels) & valid
    # clamp rather than `if num_valid == 0`: no host sync; no valid pixel gives 0 either way
    return correct.sum().float() * 100.0 / valid.sum().clamp(min=1)


def head_losses(head: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The losses of one decode head: its ``loss_decode`` terms (summed per name) and ``acc_seg``.

    logits (N, C, h, w) at the head's resolution are first resized to the labels' (N, H, W) size.
    """
    logits = resize(logits, size=labels.shape[-2:], mode="bilinear", align_corners=head.align_corners)
    weight = None
    if head.sampler is not None:
        weight = head.sampler.sample(logits, labels, head.loss_decode)
    loss_modules = head.loss_decode if isinstance(head.loss_decode, nn.ModuleList) else [head.loss_decode]
    result: dict[str, torch.Tensor] = {}
    for loss_module in loss_modules:
        value = loss_module(logits, labels, weight=weight, ignore_index=head.ignore_index)
        name = loss_module.loss_name
        result[name] = result[name] + value if name in result else value
    result["acc_seg"] = accuracy(logits, labels, ignore_index=head.ignore_index)
    return result
