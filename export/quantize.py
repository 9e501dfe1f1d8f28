"""`python -m export int8`: a statically quantized ONNX model beside the fp32 one.

ONNX Runtime's static quantization (QDQ: QuantizeLinear/DequantizeLinear pairs around each
convolution) of the folder's fp32 model.onnx, its activation ranges calibrated on training
photos named on the command line and preprocessed exactly as the manifest says. Activations
uint8, weights int8 per output channel: the pairing x86 CPUs with VNNI run as integer
arithmetic. The input and output stay float32, as the manifest says; the manifest records the
calibration (how many photos, from where, the method). `verify` then checks it on real photos
with its own tolerance (mask IoU against eager fp32), not on random tensors.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from carseg.errors import CarsegError
from carseg.io.files import staged
from carseg.io.images import read_rgb
from carseg.runtime.manifest import INT8_FILE, INT8_NAME, MANIFEST_NAME, load_manifest
from carseg.runtime.preprocess import preprocess
from export.manifest import sha256_file, with_artifact, write_manifest
from export.verify import find_images_in

log = logging.getLogger(__name__)

# --method -> onnxruntime.quantization.CalibrationMethod's member
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization warns through the root logger about BatchNormalization weights
    it leaves in float (by design: they are not convolution weights); keep that out of the
    user's terminal."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8(folder: str | Path, calibration: str | Path, num: int = 32,
                  method: str = "minmax") -> dict[str, Any]:
    """Write FOLDER/model.int8.onnx from FOLDER/model.onnx, calibrated on up to `num` photos
    of `calibration` (a CSV with an `image` column, or a folder); record it in the manifest
    as artifacts.onnx_int8. Returns its manifest entry."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    folder = Path(folder)
    if method not in METHODS:
        raise ValueError(f"--method: expected one of {list(METHODS)}, got {method!r}")
    if num < 1:
        raise ValueError(f"--num: expected at least 1 photo, got {num}")
    manifest = load_manifest(folder)
    fp32 = manifest.artifacts.get("onnx")
    if fp32 is None or fp32["precision"] != "fp32":
        raise CarsegError(f"{folder / MANIFEST_NAME}: no fp32 ONNX model to quantize (run "
                          f"`python -m export onnx` first)")
    src = folder / fp32["file"]
    if sha256_file(src) != fp32["sha256"]:
        raise CarsegError(f"{src}: sha256 does not match the manifest")
    photos = find_images_in(Path(calibration), num)
    spec = manifest.spec
    inputs = []
    for p in photos:
        try:
            inputs.append(preprocess(torch.from_numpy(read_rgb(p).copy()), spec)[None].numpy())
        except (OSError, ValueError, CarsegError) as e:
            raise CarsegError(f"{p}: cannot read a calibration photo: {e}") from None
    log.info("int8: calibrating %s (%s) on %d photo(s) from %s", src.name, method, len(inputs),
             calibration)

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._it, None)
            return None if x is None else {manifest.input["name"]: x}

    t0 = time.monotonic()
    with staged(folder, INT8_FILE) as tmp, _quiet_root_logger():
        quantize_static(str(src), str(tmp), Photos(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True,
                        calibrate_method=getattr(CalibrationMethod, METHODS[method]))
        digest, nbytes = sha256_file(tmp), tmp.stat().st_size
    seconds = round(time.monotonic() - t0, 2)
    entry: dict[str, Any] = {
        "file": INT8_FILE, "format": "onnx", "precision": "int8", "device": "cpu",
        "sha256": digest, "bytes": nbytes, "dynamic": dict(fp32["dynamic"]),
        "export_seconds": seconds, "parity": None,
        "calibration": {"source": str(calibration), "images": len(inputs), "method": method,
                        "activations": "uint8", "weights": "int8 per channel"}}
    if "opset" in fp32:
        entry["opset"] = fp32["opset"]
    write_manifest(with_artifact(manifest, INT8_NAME, entry), folder)
    log.info("int8: wrote %s (%.1f MB, %.1f s); recorded in %s", folder / INT8_FILE,
             nbytes / 1e6, seconds, folder / MANIFEST_NAME)
    return entry
