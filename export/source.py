"""The model to export: rebuilt from a logdir's resolved config plus a checkpoint.

Export never touches the training-time module (after training, accelerate wraps its forward
in autocast, and a trace records that): it builds the model again from config.resolved.yml
and loads the checkpoint's state dict into it, refusing a checkpoint that does not fit.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from carseg import __version__ as carseg_version
from carseg.errors import CarsegError, ConfigError
from carseg.runtime.preprocess import PreprocessSpec
from carseg.runtime.refine import RefineSpec
from carseg.train.config import RESOLVED_NAME, train_step
from carseg.train.models import build_model, model_spec
from export.manifest import PRECISIONS, Manifest, sha256_file, utc_now

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = {"best": "model.best.pth", "last": "model.last.pth"}
SHOW_KEYS = 4  # how many offending keys a mismatch message names


def _refine_spec(value: Any, config_path: Path) -> RefineSpec | None:
    """shared.refine of the config: false for none, else the refinement's parameters over
    RefineSpec's defaults (on by default: docs/manifest.md's output.refine)."""
    if value is False or value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{config_path}: shared.refine: expected false or a mapping of "
                          f"{sorted(RefineSpec().to_json())}, got {type(value).__name__}")
    try:
        return RefineSpec.from_json({**RefineSpec().to_json(), **value}, "shared.refine")
    except ValueError as e:
        raise ConfigError(f"{config_path}: {e}") from None


@dataclass(frozen=True)
class Source:
    """Everything export needs from a training run."""

    logdir: Path
    config_path: Path
    checkpoint: Path
    checkpoint_sha256: str
    model_kwargs: dict[str, Any]
    spec: PreprocessSpec
    threshold: float
    valid: dict[str, float]
    refine: RefineSpec | None = RefineSpec()


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CarsegError(
                f"--device {name}: no CUDA device here (torch {torch.__version__}, "
                f"torch.cuda.is_available() is False); use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CarsegError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                              f"device(s) here")
        return dev
    raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")


def dtype_of(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {sorted(PRECISIONS)}, got {precision!r}")
    return torch.float16 if precision == "fp16" else torch.float32


def _find_checkpoint(logdir: Path, checkpoint: str | Path) -> Path:
    name = str(checkpoint)
    if name in CHECKPOINT_NAMES:
        path = logdir / "checkpoints" / CHECKPOINT_NAMES[name]
        if not path.is_file():
            have = sorted(p.name for p in (logdir / "checkpoints").glob("*.pth")) \
                if (logdir / "checkpoints").is_dir() else []
            raise FileNotFoundError(
                f"{path}: no checkpoint in this logdir (found {have or 'no .pth files'}; "
                f"has training finished an epoch?)")
        return path
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return path


def load_source(logdir: str | Path, checkpoint: str | Path = "best") -> Source:
    """Read LOGDIR/config.resolved.yml, find the checkpoint, read summary.json's metrics."""
    logdir = Path(logdir).resolve()
    if not logdir.is_dir():
        raise FileNotFoundError(f"{logdir}: logdir not found")
    config_path = logdir / RESOLVED_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path}: the logdir has no resolved config; export rebuilds the model "
            f"from it (train with `carseg train` or `catalyst-run` on a carseg config)")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{config_path}: not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level")
    try:
        step = train_step(config)
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from None
    if not isinstance(step.get("model"), dict):
        raise ConfigError(f"{config_path}: run.train.model: expected a mapping")
    model_kwargs = model_spec(step["model"])
    shared = config.get("shared") or {}
    if "image_size" not in shared:
        raise ConfigError(f"{config_path}: shared.image_size is missing; export needs the "
                          f"training image size")
    try:
        spec = PreprocessSpec(size=int(shared["image_size"]),
                              mean=tuple(float(v) for v in shared.get("mean", (0.485, 0.456,
                                                                                0.406))),
                              std=tuple(float(v) for v in shared.get("std", (0.229, 0.224,
                                                                              0.225))))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{config_path}: shared: {e}") from None
    threshold = float(shared.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"{config_path}: shared.threshold must be in (0, 1), got {threshold}")
    refine = _refine_spec(shared.get("refine", {}), config_path)
    ckpt = _find_checkpoint(logdir, checkpoint).resolve()
    valid: dict[str, float] = {}
    summary = logdir / "summary.json"
    if summary.is_file():
        import json

        try:
            valid = {k: float(v) for k, v in json.loads(summary.read_text())
                     .get("valid", {}).items()}
        except (ValueError, AttributeError) as e:
            log.warning("%s: unreadable (%s); valid metrics left out of the manifest",
                        summary, e)
    return Source(logdir=logdir, config_path=config_path, checkpoint=ckpt,
                  checkpoint_sha256=sha256_file(ckpt), model_kwargs=model_kwargs, spec=spec,
                  threshold=threshold, valid=valid, refine=refine)


def _state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """A plain state dict from what Catalyst (or a user) saved."""
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CarsegError(f"{path}: not a model state dict (got {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    return shown + (", …" if len(keys) > SHOW_KEYS else "")


def build_eager(source: Source, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The trained model in eval mode, rebuilt from the config, checkpoint loaded; in the
    default memory format whatever the training used (channels_last is the training's choice
    for its own speed; each backend picks its own)."""
    model = build_model(**{**source.model_kwargs, "channels_last": False})
    try:
        obj = torch.load(source.checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises a zoo of types for a bad file
        raise CarsegError(f"{source.checkpoint}: not a readable checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                          ) from None
    state = _state_dict(obj, source.checkpoint)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        arch = f"{source.model_kwargs.get('arch')}/{source.model_kwargs.get('encoder_name')}"
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} key(s) with another shape (checkpoint vs model): "
                         f"{_first(shapes)}")
        raise CarsegError(f"{source.checkpoint}: does not fit the model {arch} of "
                          f"{source.config_path}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device=device, dtype=dtype)


def base_manifest(source: Source, model: torch.nn.Module, precision: str) -> Manifest:
    """The manifest of this source, without artifacts."""
    size = source.spec.size
    dtype = PRECISIONS[precision]
    try:
        import onnx

        onnx_version = onnx.__version__
    except ImportError:
        onnx_version = None
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    kw = source.model_kwargs
    return Manifest(
        carseg_version=carseg_version,
        created=utc_now(),
        model={"arch": str(kw["arch"]), "encoder_name": str(kw["encoder_name"]),
               "classes": int(kw["classes"]), "in_channels": int(kw["in_channels"]),
               "parameters": int(sum(p.numel() for p in model.parameters()))},
        source={"logdir": str(source.logdir), "checkpoint": str(source.checkpoint),
                "checkpoint_sha256": source.checkpoint_sha256, "valid": dict(source.valid)},
        preprocessing=source.spec.to_json(),
        input={"name": "input", "dtype": dtype, "shape": ["N", 3, size, size]},
        output={"name": "logits", "dtype": dtype, "shape": ["N", 1, size, size],
                "kind": "logits", "activation": "sigmoid", "threshold": source.threshold,
                **({"refine": source.refine.to_json()} if source.refine else {})},
        artifacts={},
        versions={"torch": torch.__version__.split("+")[0], "onnx": onnx_version,
                  "onnxruntime": ort_version, "python": platform.python_version()},
    )

