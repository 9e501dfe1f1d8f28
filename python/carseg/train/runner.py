"""The Catalyst runner carseg configs name: SupervisedRunner plus the run's records.

On top of Catalyst's SupervisedRunner it
- writes the fully resolved config into the logdir (config.resolved.yml), so that export can
  rebuild the exact model without the original files;
- writes summary.json with the best epoch's valid dice, iou and loss, and the image size they
  were measured at (the model's input, not the photos');
- uses carseg's CheckpointCallback, whose model.best.pth really is the best epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from catalyst.callbacks.checkpoint import ICheckpointCallback
from catalyst.runners import SupervisedRunner

from carseg.io.files import write_atomic
from carseg.train import config as cfg
from carseg.train.callbacks import CheckpointCallback
from carseg.train.run import claim_logdir

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"


class SegmentationRunner(SupervisedRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Captured here, in the launching process: DDP workers get it pickled with the runner.
        self._carseg_config = cfg.active()
        if self._carseg_config is not None:
            cfg.validate(self._carseg_config)
            # catalyst-run comes here without `carseg train`'s check: refuse, before Catalyst
            # touches the logdir, one that holds another run (claim_logdir; a no-op after
            # `carseg train`, which checked or cleared it).
            claim_logdir(cfg.train_step(self._carseg_config)["logdir"])
        self._carseg_best: dict[str, Any] | None = None
        self._carseg_t0 = 0.0

    def get_callbacks(self):
        callbacks = super().get_callbacks()
        cb = callbacks.get("_checkpoint")
        if cb is not None and isinstance(cb, ICheckpointCallback) and \
                not isinstance(cb, CheckpointCallback):
            callbacks["_checkpoint"] = CheckpointCallback(
                logdir=cb.logdir, loader_key=cb.loader_key, metric_key=cb.metric_key,
                minimize=cb._minimize if cb.metric_key else None,
                load_best_on_end=cb.load_best_on_end)
        return callbacks

    def _is_main(self) -> bool:
        return self.engine is None or self.engine.is_main_process

    def on_experiment_start(self, runner) -> None:
        super().on_experiment_start(runner)
        self._carseg_t0 = time.monotonic()
        self._carseg_best = None
        if self._logdir is None or not self._is_main():
            return
        logdir = Path(self._logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        if self._carseg_config is not None:
            cfg.dump(self._carseg_config, logdir / cfg.RESOLVED_NAME)
        else:
            log.warning("%s: no config known to this process; %s not written",
                        logdir, cfg.RESOLVED_NAME)

    def on_epoch_end(self, runner) -> None:
        super().on_epoch_end(runner)
        valid = self.epoch_metrics.get(self._valid_loader or "valid", {})
        metric = self._valid_metric or "dice"
        if metric not in valid:
            return
        score = float(valid[metric])
        better = self._carseg_best is None or (
            score < self._carseg_best[metric] if self._minimize_valid_metric
            else score > self._carseg_best[metric])
        if better and not math.isnan(score):
            self._carseg_best = {k: float(v) for k, v in valid.items()
                                 if isinstance(v, (int, float))}
            self._carseg_best["epoch"] = int(self.epoch_step)

    def on_experiment_end(self, runner) -> None:
        super().on_experiment_end(runner)
        if self._logdir is None or not self._is_main() or self._carseg_best is None:
            return
        best = self._carseg_best
        summary = {
            "best_epoch": best["epoch"],
            "num_epochs": int(self.epoch_step),
            "valid": {k: best[k] for k in ("dice", "iou", "loss") if k in best},
            "valid_all": {k: v for k, v in best.items() if k != "epoch"},
            "metric": self._valid_metric or "dice",
            "train_seconds": round(time.monotonic() - self._carseg_t0, 1),
            "checkpoint": str(Path(self._logdir) / "checkpoints" / "model.best.pth"),
        }
        shared = (self._carseg_config or {}).get("shared") or {}
        if "image_size" in shared:  # the valid metrics are at this size, not the photos'
            summary["image_size"] = int(shared["image_size"])
        path = Path(self._logdir) / SUMMARY_NAME
        write_atomic(path, json.dumps(summary, indent=2) + "\n")
