"""`carseg train`: run a Catalyst 22 config, with command-line overrides."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carseg.errors import CarsegError, ConfigError
from carseg.train import config as cfg

log = logging.getLogger(__name__)


def prepare_config(config_paths: Sequence[str | Path], *, logdir: str | Path | None = None,
                   data: str | Path | None = None, epochs: int | None = None,
                   image_size: int | None = None) -> dict[str, Any]:
    """Load, merge, override, validate and resolve; what the run will use, nothing built yet."""
    config = cfg.load_configs(config_paths)
    config = cfg.apply_overrides(config, logdir=logdir, data=data, epochs=epochs,
                                 image_size=image_size)
    cfg.validate(config, source=", ".join(str(p) for p in config_paths))
    return cfg.resolve(config)


# What a run leaves in its logdir: a folder holding any of these holds a run.
RUN_FILES = ("config.resolved.yml", "summary.json", "checkpoints", "csv_logger", "tensorboard")


def claim_logdir(logdir: str | Path, overwrite: bool = False) -> Path:
    """A run never destroys another run's results: refuse a logdir that holds a run, unless
    `overwrite` (then that run is deleted first, as asked)."""
    logdir = Path(logdir)
    previous = [n for n in RUN_FILES if (logdir / n).exists()]
    if previous and not overwrite:
        raise ConfigError(
            f"{logdir}: holds a previous run ({', '.join(previous)}); a run never replaces "
            f"another's results: train into a new folder (`carseg train --logdir NEW`, or "
            f"run.logdir in the config), or replace it with `carseg train --overwrite`")
    if previous:
        log.info("%s: --overwrite: deleting the previous run", logdir)
        shutil.rmtree(logdir)
    return logdir


def _original(e: BaseException) -> BaseException:
    seen = e
    while seen is not None:
        if isinstance(seen, (CarsegError, FileNotFoundError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    return ConfigError(f"config: {root.__class__.__name__}: {root}".splitlines()[0])


def run_config(config: dict[str, Any], overwrite: bool = False) -> Path:
    """Build everything the config names and train; returns the logdir. A logdir that holds
    a run is refused (ConfigError) unless `overwrite`."""
    from catalyst.contrib.scripts.run import run_from_params
    from catalyst.registry import REGISTRY

    claim_logdir(cfg.train_step(config)["logdir"], overwrite)
    cfg.set_active(config)
    # hydra-slayer's Registry keeps `_var_` objects between calls: a second run in the same
    # process would see the first run's `model` and refuse the config. Start each run clean.
    getattr(REGISTRY, "_vars_dict", {}).clear()
    try:
        try:
            params = REGISTRY.get_from_params(**config)
        except (TypeError, LookupError, RuntimeError) as e:
            # hydra-slayer wraps a factory's exception in "Factory '...' call failed" with a
            # dump of every argument; the user needs the original (which names the file).
            raise _original(e) from None
        run_from_params(params)
    finally:
        cfg.set_active(None)
    return Path(cfg.train_step(config)["logdir"])


def train(config_paths: Sequence[str | Path], overwrite: bool = False, **overrides: Any
          ) -> Path:
    config = prepare_config(config_paths, **overrides)
    logdir = run_config(config, overwrite=overwrite)
    log.info("logdir: %s", logdir)
    return logdir
