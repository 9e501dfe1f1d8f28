"""Learning-rate schedules whose length is `num_epochs`, so `--epochs` keeps them right."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, num_epochs: int, warmup_epochs: int = 1,
                  min_factor: float = 0.02) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for `warmup_epochs`, then cosine decay to `min_factor` (stepped per epoch)."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        t = (epoch - warmup_epochs) / max(1, num_epochs - warmup_epochs)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
