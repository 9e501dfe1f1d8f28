"""One way to open any backend as a predictor of masks, for the commands that serve them.

backend "native" is the C++ core through carseg._native; "torchscript", "onnx" and "aoti" run
the artifact in Python through carseg.runtime.reference.ReferencePredictor. Both take HxWx3
uint8 RGB arrays of any size and return HxW uint8 {0,1} masks at the photo's size.

carseg._native is imported when first asked for: it is compiled, and `import carseg` must work
where it was not built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carseg.errors import CarsegError
from carseg.runtime.reference import ReferencePredictor

BACKENDS = ("native", "torchscript", "onnx", "aoti")


def describe(predictor: Any, backend: str) -> str:
    """What a predictor opened with `backend` actually runs, for the first line a command
    prints: "native (onnx) int8 on cpu, refinement on (radius 2.0 model px)"."""
    runtime = getattr(predictor, "backend", backend)
    refine = getattr(predictor, "refine", None)
    radius = None if not refine else (refine["radius"] if isinstance(refine, dict)
                                      else refine.radius)
    return (f"{backend}{f' ({runtime})' if runtime != backend else ''} "
            f"{getattr(predictor, 'precision', '?')} on {getattr(predictor, 'device', '?')}, "
            f"refinement {'off' if radius is None else f'on (radius {radius} model px)'}")


DECODES = ("cpu", "gpu")


def check_decode(decode: str, backend: str, device: str) -> None:
    """--decode gpu (JPEGs decoded by nvJPEG on the device, the model reading them in place) is
    libcarseg's folder pipeline on CUDA: the native backend on a CUDA device. Anything else is
    refused here, before any work, saying what to change."""
    if decode not in DECODES:
        raise ValueError(f"--decode: expected cpu or gpu, got {decode!r}")
    if decode == "gpu" and (backend != "native" or not device.startswith("cuda")):
        raise ValueError(f"--decode gpu decodes JPEGs with nvJPEG for the C++ pipeline on a GPU: "
                         f"use it with --backend native --device cuda (got --backend {backend} "
                         f"--device {device})")


def open_predictor(model_dir: str | Path, backend: str = "torchscript", device: str = "cpu",
                   precision: str = "auto", threshold: float | None = None,
                   refine: bool = True, softness: float | None = None) -> Any:
    """refine=False: the model's mask resized, without the manifest's output.refine; softness
    overrides the refinement's soft-edge width. precision "auto": int8 on the CPU where the
    folder has a verified int8 model and the backend runs it (native, onnx), else fp32
    (manifest.auto_precision, resolved where the manifest is read; the predictor's
    `precision` says which). Every predictor has
    render() (mask, alpha matte and cutout from one forward pass)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "native":
        try:
            from carseg import _native
        except ImportError as e:
            raise CarsegError(f"backend native: the C++ module carseg._native is not built "
                              f"({e}); use --backend torchscript, or build with "
                              f"`pip install --no-build-isolation -e .`") from None
        return _native.Predictor(str(model_dir), device=device, precision=precision,
                                 threshold=threshold, refine=refine, softness=softness)
    if precision not in ("auto", "fp32", "int8"):
        raise ValueError(f"precision {precision}: the Python backends run the artifact's own "
                         f"precision; export an fp16 folder instead")
    return ReferencePredictor(model_dir, backend=backend, device=device, threshold=threshold,
                              refine=refine, softness=softness,
                              precision=None if precision == "fp32" else precision)


def trial_open(model_dir: str | Path, backend: str = "torchscript", device: str = "cpu") -> str:
    """Open `model_dir` once with `backend` on `device`, and let it go: for a command whose
    workers open it later (Ray actors, Serve replicas), so that a folder they could not load is
    refused here, with the real reason, before they start. Returns what they will run
    (describe)."""
    return describe(open_predictor(model_dir, backend=backend, device=device), backend)
