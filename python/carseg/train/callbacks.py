"""Catalyst callbacks that carseg needs beyond Catalyst's own."""

from __future__ import annotations

import shutil
from pathlib import Path

from catalyst.callbacks.checkpoint import CheckpointCallback as _CatalystCheckpoint
from catalyst.callbacks.metrics.segmentation import DiceCallback as _CatalystDice
from catalyst.callbacks.metrics.segmentation import IOUCallback as _CatalystIOU

from carseg.io.files import staged


class CheckpointCallback(_CatalystCheckpoint):
    """Catalyst's CheckpointCallback with a correct `model.best.pth`.

    Catalyst 22.04 (mode "model") keeps a reference to the live model for every epoch and
    writes *that* as the best, so model.best.pth holds the latest weights, not the best
    epoch's. Here the best is a copy of the best epoch's own file, written when it was best.
    """

    def on_epoch_end_best(self, runner) -> None:  # noqa: D102 - see class docstring
        if self.loader_key is not None:
            score = runner.epoch_metrics[self.loader_key][self.metric_key]
        else:
            score = runner.epoch_metrics[self.metric_key]
        self._handle_epoch(runner=runner, score=score)
        if self.save_best and runner.engine.is_main_process:
            best = Path(self._storage[0].logpath)
            target = Path(self.logdir) / f"{self.mode}.best.pth"
            with staged(target.parent, target.name) as tmp:
                shutil.copyfile(best, tmp)


class _GlooSafeStatistics:
    """Catalyst 22.04's segmentation metrics gather their statistics across processes with
    a pickle-based all_gather that moves bytes to "cuda", which fails on a CPU (gloo) run.
    Here the statistics are summed with dist.all_reduce on their own device instead; on
    nccl, Catalyst's path is kept."""

    def on_loader_end(self, runner) -> None:
        import torch
        import torch.distributed as dist

        metric = self.metric
        if not (getattr(metric, "_ddp_backend", None) == "ddp" and dist.is_initialized()
                and dist.get_backend() != "nccl"):
            super().on_loader_end(runner)
            return
        for stats in metric.statistics.values():
            for key in stats:
                t = torch.as_tensor(stats[key], dtype=torch.float64).clone()
                dist.all_reduce(t)
                stats[key] = t
        metric._ddp_backend = None
        try:
            super().on_loader_end(runner)
        finally:
            metric._ddp_backend = "ddp"


class DiceCallback(_GlooSafeStatistics, _CatalystDice):
    """catalyst.callbacks.DiceCallback that also works in CPU distributed runs."""


class IOUCallback(_GlooSafeStatistics, _CatalystIOU):
    """catalyst.callbacks.IOUCallback that also works in CPU distributed runs."""
