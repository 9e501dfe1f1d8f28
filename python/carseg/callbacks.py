"""Catalyst callbacks that carseg needs beyond Catalyst's own."""

from __future__ import annotations

import shutil
from pathlib import Path

from catalyst.callbacks.checkpoint import CheckpointCallback as _CatalystCheckpoint


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
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(best, tmp)
            tmp.replace(target)
