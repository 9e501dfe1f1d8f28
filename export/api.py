"""Export one artifact from a logdir into an artifact folder and record it in manifest.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from carseg.io.files import prepare_out_dir, staged
from export import formats
from export.manifest import (
    FORMATS,
    MANIFEST_NAME,
    Manifest,
    check_compatible,
    load_manifest,
    merge_artifact,
    sha256_file,
)
from export.source import base_manifest, build_eager, dtype_of, load_source, resolve_device

log = logging.getLogger(__name__)


def default_out(logdir: str | Path) -> Path:
    return Path(logdir) / "export"


def export_artifact(fmt: str, logdir: str | Path, out: str | Path | None = None, *,
                    checkpoint: str | Path = "best", device: str = "cpu",
                    precision: str = "fp32", method: str = "trace",
                    opset: int = formats.DEFAULT_OPSET, exporter: str = "dynamo",
                    simplify: bool = False, aoti_timeout_s: float = 1800.0) -> Manifest:
    """Write OUT/<file of fmt> and add it to OUT/manifest.json; returns the new manifest.

    Every check that can fail fast runs before the slow step; the file is written under a
    temporary name and renamed at the end, so a failure leaves no partial artifact.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {sorted(FORMATS)}, got {fmt!r}")
    dtype = dtype_of(precision)
    dev = resolve_device(device)
    if fmt == "onnx":
        formats.check_opset(opset, exporter)
    if fmt == "torchscript" and method not in ("trace", "script"):
        raise ValueError(f"--method: expected trace or script, got {method!r}")
    source = load_source(logdir, checkpoint)
    out = prepare_out_dir(out if out is not None else default_out(source.logdir))
    valid = ", ".join(f"valid {k} {v:.4f}" for k, v in source.valid.items() if k != "loss")
    log.info("%s: the run in %s (%s/%s, %s%s)", fmt, source.logdir, source.model_kwargs["arch"],
             source.model_kwargs["encoder_name"], source.checkpoint.name,
             f", {valid}" if valid else "")
    model = build_eager(source, dev, dtype)
    base = base_manifest(source, model, precision)
    if (out / MANIFEST_NAME).exists():  # refuse a folder of another model before the slow part
        check_compatible(load_manifest(out / MANIFEST_NAME), base, out / MANIFEST_NAME)

    size = source.spec.size
    final = out / FORMATS[fmt]
    log.info("%s: writing %s (%s, %s, input %dx%d)", fmt, final, precision, dev, size, size)
    t0 = time.monotonic()
    with staged(out, FORMATS[fmt]) as tmp:
        info: dict[str, Any]
        if fmt == "torchscript":
            info = formats.write_torchscript(model, tmp, size, dev, dtype, method=method)
        elif fmt == "onnx":
            info = formats.write_onnx(model, tmp, size, dev, dtype, opset=opset,
                                      exporter=exporter, simplify=simplify)
        else:
            del model  # the child process builds its own
            info = formats.write_aoti(source.logdir, source.checkpoint, tmp, dev, precision,
                                      timeout_s=aoti_timeout_s)
        seconds = round(time.monotonic() - t0, 2)
        digest, nbytes = sha256_file(tmp), tmp.stat().st_size
    entry: dict[str, Any] = {"file": final.name, "format": fmt, "precision": precision,
                             "device": dev.type, "sha256": digest, "bytes": nbytes,
                             "dynamic": info["dynamic"], "export_seconds": seconds,
                             "parity": None}
    if fmt == "onnx":
        entry["opset"] = int(info["opset"])
    manifest = merge_artifact(out, base, fmt, entry)
    log.info("%s: wrote %s (%.1f MB, %.1f s); recorded in %s", fmt, final, nbytes / 1e6,
             seconds, out / MANIFEST_NAME)
    return manifest


def aoti_worker(logdir: str | Path, checkpoint: str | Path, package: str | Path,
                device: str, precision: str) -> dict[str, Any]:
    """The child-process side of an AOTI export: compile into `package`."""
    dev = resolve_device(device)
    dtype = dtype_of(precision)
    source = load_source(logdir, checkpoint)
    model = build_eager(source, dev, dtype)
    return formats.compile_aoti(model, Path(package), source.spec.size, dev, dtype)
