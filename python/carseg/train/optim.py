"""Learning-rate schedules whose length is `num_epochs`, so `--epochs` keeps them right."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmupCosineFactor:
    """A picklable LambdaLR factor (DDP workers receive the scheduler by pickle)."""

    num_epochs: int
    warmup_epochs: int = 1
    min_factor: float = 0.02

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        t = (epoch - self.warmup_epochs) / max(1, self.num_epochs - self.warmup_epochs)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def warmup_cosine(optimizer: torch.optim.Optimizer, num_epochs: int, warmup_epochs: int = 1,
                  min_factor: float = 0.02) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for `warmup_epochs`, then cosine decay to `min_factor` (stepped per epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosineFactor(num_epochs, warmup_epochs, min_factor))
