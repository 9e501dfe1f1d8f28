"""Loading, overriding, validating and resolving Catalyst 22 YAML configs.

A carseg config is a plain Catalyst 22 Config API file (`catalyst-run --config` runs it):
`runner`, and `run` with one `_call_: train` step. carseg adds one section Catalyst ignores,
`shared`, for the facts that export and inference need: image_size, mean, std, threshold.
Overrides set every key of a name anywhere in the tree, so YAML anchors and their copies
cannot disagree after `carseg train --image-size 320`.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from carseg.errors import ConfigError
from carseg.io.files import write_atomic

RESOLVED_NAME = "config.resolved.yml"
TOP_LEVEL = {"shared", "runner", "run"}
SHARED_KEYS = {"image_size", "mean", "std", "threshold", "refine"}
PATH_KEYS = {"csv_path"}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Right wins; dicts merge recursively; lists are replaced (as catalyst-run does)."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_configs(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Load and merge YAML files left to right (`-C train.yml engine_ddp.yml`)."""
    config: dict[str, Any] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: config file not found")
        try:
            part = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(part, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level, got "
                              f"{type(part).__name__}")
        config = _merge(config, part)
    return config


def set_everywhere(node: Any, key: str, value: Any) -> int:
    """Set `key` to `value` in every mapping of the tree; returns how many were set."""
    return map_key(node, key, lambda _: copy.deepcopy(value))


def map_key(node: Any, key: str, fn) -> int:
    """Replace every value of `key` in the tree by fn(value); returns how many were replaced."""
    n = 0
    if isinstance(node, dict):
        for k in list(node):
            if k == key:
                node[k] = fn(node[k])
                n += 1
            else:
                n += map_key(node[k], key, fn)
    elif isinstance(node, list):
        for item in node:
            n += map_key(item, key, fn)
    return n


def scale_crop(crop: Any, old: int, new: int) -> Any:
    """A training crop made for image size `old`, for image size `new`: each side scaled and
    rounded up to a multiple of 32, at most `new` (the crop keeps what it kept)."""
    if crop is None:
        return None
    sides = [crop] if isinstance(crop, int) else list(crop)
    scaled = [min(new, -(-int(v) * new // old // 32) * 32 or 32) for v in sides]
    return scaled[0] if isinstance(crop, int) else scaled


def _walk_paths(node: Any, fn) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in PATH_KEYS and isinstance(v, str):
                node[k] = fn(v)
            else:
                _walk_paths(v, fn)
    elif isinstance(node, list):
        for item in node:
            _walk_paths(item, fn)


def apply_overrides(config: dict[str, Any], *, logdir: str | Path | None = None,
                    data: str | Path | None = None, epochs: int | None = None,
                    image_size: int | None = None) -> dict[str, Any]:
    """`carseg train` flags: each replaces every occurrence of its key."""
    config = copy.deepcopy(config)
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {epochs}")
        set_everywhere(config, "num_epochs", int(epochs))
    if image_size is not None:
        if image_size < 32 or image_size % 32:
            raise ConfigError(f"--image-size must be a positive multiple of 32, got {image_size}")
        old = (config.get("shared") or {}).get("image_size")
        if isinstance(old, int) and old > 0:
            map_key(config, "train_crop", lambda crop: scale_crop(crop, old, int(image_size)))
        set_everywhere(config, "image_size", int(image_size))
    if logdir is not None:
        set_everywhere(config, "logdir", str(logdir))
    if data is not None:
        data = Path(data)
        if not data.is_dir():
            raise FileNotFoundError(f"{data}: data folder not found")
        _walk_paths(config, lambda p: str(data / Path(p).name))
    return config


def train_step(config: dict[str, Any]) -> dict[str, Any]:
    """The `run` entry with `_call_: train`."""
    run = config.get("run")
    if not isinstance(run, list) or not run:
        raise ConfigError("run: expected a list of steps with one `_call_: train`")
    steps = [s for s in run if isinstance(s, dict) and s.get("_call_") == "train"]
    if len(steps) != 1:
        raise ConfigError(f"run: expected exactly one `_call_: train` step, got {len(steps)}")
    return steps[0]


def validate(config: dict[str, Any], source: str = "config") -> None:
    """Refuse keys that Catalyst would ignore or fail on late, naming them."""
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; "
                          f"expected {sorted(TOP_LEVEL)}")
    if "runner" not in config:
        raise ConfigError(f"{source}: missing `runner`")
    shared = config.get("shared", {})
    if not isinstance(shared, dict):
        raise ConfigError(f"{source}: shared: expected a mapping")
    bad = sorted(set(shared) - SHARED_KEYS)
    if bad:
        raise ConfigError(f"{source}: shared: unknown key(s) {bad}; expected {sorted(SHARED_KEYS)}")
    step = train_step(config)
    from catalyst.runners.runner import Runner

    accepted = set(inspect.signature(Runner.train).parameters) - {"self"}
    bad = sorted(set(step) - accepted - {"_call_"})
    if bad:
        raise ConfigError(f"{source}: run.train: unknown key(s) {bad}; "
                          f"accepted: {sorted(accepted)}")
    for key in ("model", "loaders", "logdir"):
        if key not in step:
            raise ConfigError(f"{source}: run.train: missing `{key}`")
    loaders = step["loaders"]
    if not isinstance(loaders, dict) or "train" not in loaders or "valid" not in loaders:
        raise ConfigError(f"{source}: run.train.loaders: expected `train` and `valid` loaders")


def resolve(config: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """A copy with data paths made absolute, so the logdir's copy works from anywhere."""
    config = copy.deepcopy(config)
    base = base or Path.cwd()
    _walk_paths(config, lambda p: str((base / p).resolve()) if not Path(p).is_absolute() else p)
    step = train_step(config)
    step["logdir"] = str((base / step["logdir"]).resolve())
    return config


def dump(config: dict[str, Any], path: Path) -> None:
    write_atomic(path, yaml.safe_dump(config, sort_keys=False))


# The config the current process is running: set by `carseg train`; under `catalyst-run`
# it is read back from the command line, with catalyst's own argument parser.
_active: dict[str, Any] | None = None


def set_active(config: dict[str, Any] | None) -> None:
    global _active
    _active = copy.deepcopy(config) if config is not None else None


def active() -> dict[str, Any] | None:
    if _active is not None:
        return copy.deepcopy(_active)
    if Path(sys.argv[0]).name.startswith("catalyst-run"):
        from catalyst.contrib.scripts.run import parse_args

        args, _ = parse_args(sys.argv[1:])
        return resolve(load_configs(args["configs"]))
    return None
