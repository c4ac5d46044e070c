"""Online hard example mining over pixels (OHEM), as ``dict(type='OHEMPixelSampler', ...)``."""

from __future__ import annotations

import torch
from torch import nn


class OHEMPixelSampler:
    """Keep the hardest pixels: weight 1 for kept pixels, 0 for the rest.

    With ``thresh``, pixels whose predicted probability of their true class is below
    ``max(thresh, the min_kept-th lowest probability)`` are kept; without it the ``min_kept`` pixels
    (per image) with the largest loss under the head's losses are kept.
    """

    def __init__(self, thresh: float | None = None, min_kept: int = 100000, ignore_index: int = 255):
        self.thresh = thresh
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    @torch.no_grad()
    def sample(self, logits: torch.Tensor, labels: torch.Tensor, losses: nn.Module | None = None) -> torch.Tensor:
        """logits (N, C, H, W), labels (N, H, W) -> float weights (N, H, W).

        ``losses``: the head's loss module(s), needed only without ``thresh``.
        """
        batch_kept = self.min_kept * labels.size(0)
        valid = labels != self.ignore_index
        weights = logits.new_zeros(labels.shape)
        valid_weights = weights[valid]
        if self.thresh is not None:
            probs = logits.softmax(dim=1)
            target = torch.where(valid, labels, 0).unsqueeze(1)
            true_prob = probs.gather(1, target).squeeze(1)[valid]
            sorted_prob, _ = true_prob.sort()
            min_threshold = sorted_prob[min(batch_kept, sorted_prob.numel() - 1)] if sorted_prob.numel() else 0.0
            valid_weights[true_prob < max(min_threshold, self.thresh)] = 1.0
        else:
            loss_modules = losses if isinstance(losses, nn.ModuleList) else [losses]
            pixel_loss = sum(
                loss(logits, labels, weight=None, ignore_index=self.ignore_index, reduction_override="none")
                for loss in loss_modules
            )
            _, order = pixel_loss[valid].sort(descending=True)
            valid_weights[order[:batch_kept]] = 1.0
        weights[valid] = valid_weights
        return weights
