"""Losses on logits for binary segmentation."""

from __future__ import annotations

import torch
from torch import nn


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against {0,1} targets, per image, averaged."""
    probs = torch.sigmoid(logits.float()).flatten(1)
    targets = targets.float().flatten(1)
    inter = (probs * targets).sum(1)
    dice = (2 * inter + eps) / (probs.sum(1) + targets.sum(1) + eps)
    return 1 - dice.mean()


class DiceLoss(nn.Module):
    def __init__(self, eps: float = 1.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, targets, self.eps)


class BCEDiceLoss(nn.Module):
    """bce_weight * BCE + (1 - bce_weight) * Dice: BCE gives gradients where Dice saturates."""

    def __init__(self, bce_weight: float = 0.5, eps: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= bce_weight <= 1.0:
            raise ValueError(f"bce_weight must be in [0, 1], got {bce_weight}")
        self.bce_weight = bce_weight
        self.eps = eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float())
        return self.bce_weight * bce + (1 - self.bce_weight) * soft_dice_loss(
            logits, targets, self.eps)
