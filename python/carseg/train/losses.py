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


def edge_band(targets: torch.Tensor, width: int) -> torch.Tensor:
    """1 on the pixels within `width` pixels (a square window) of the mask's edge, on either
    side, else 0: the morphological gradient of {0,1} targets [N,1,H,W] (or [N,H,W])."""
    t = targets.float()
    squeeze = t.ndim == 3
    if squeeze:
        t = t[:, None]
    k = 2 * width + 1
    dilated = nn.functional.max_pool2d(t, k, stride=1, padding=width)
    eroded = -nn.functional.max_pool2d(-t, k, stride=1, padding=width)
    band = dilated - eroded
    return band[:, 0] if squeeze else band


class EdgeBCEDiceLoss(BCEDiceLoss):
    """BCEDiceLoss whose BCE counts the pixels near the car's edge (within `edge_width` px at
    the training size) `edge_weight` times more: at a small input size the edge is a few
    percent of the pixels, and it is what a cutout's quality hangs on."""

    def __init__(self, bce_weight: float = 0.5, edge_weight: float = 4.0, edge_width: int = 2,
                 eps: float = 1.0) -> None:
        super().__init__(bce_weight, eps)
        if edge_weight < 0 or edge_width < 1:
            raise ValueError(f"edge_weight must be >= 0 and edge_width >= 1, got {edge_weight} "
                             f"and {edge_width}")
        self.edge_weight, self.edge_width = edge_weight, edge_width

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = 1 + self.edge_weight * edge_band(targets, self.edge_width)
        bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                             weight=weight)
        bce = bce / weight.mean()  # the same scale as the unweighted BCE
        return self.bce_weight * bce + (1 - self.bce_weight) * soft_dice_loss(
            logits, targets, self.eps)
