"""manifest.json: schema checks name the bad field; writes are atomic; hashes are sha256."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from carseg.errors import CarsegError
from export.manifest import (
    Manifest,
    load_manifest,
    merge_artifact,
    sha256_file,
    write_manifest,
)

GOOD = {
    "schema_version": 1,
    "carseg_version": "0.1.0",
    "created": "2026-11-26T05:00:00Z",
    "model": {"arch": "Unet", "encoder_name": "resnet18", "classes": 1, "in_channels": 3,
              "parameters": 14328209},
    "source": {"logdir": "/abs/logs/demo", "checkpoint": "/abs/logs/demo/model.best.pth",
               "checkpoint_sha256": "a" * 64, "valid": {"dice": 0.97}},
    "preprocessing": {"size": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                      "max_pixel_value": 255.0, "pad_value": 0, "pad_position": "bottom_right",
                      "interpolation": "bilinear", "antialias": False, "channel_order": "RGB",
                      "layout": "NCHW"},
    "input": {"name": "input", "dtype": "float32", "shape": ["N", 3, 256, 256]},
    "output": {"name": "logits", "dtype": "float32", "shape": ["N", 1, 256, 256],
               "kind": "logits", "activation": "sigmoid", "threshold": 0.5},
    "artifacts": {
        "onnx": {"file": "model.onnx", "format": "onnx", "opset": 18, "precision": "fp32",
                 "device": "cpu", "sha256": "b" * 64, "bytes": 10,
                 "dynamic": {"batch": True, "spatial": True}, "export_seconds": 4.1,
                 "parity": None}},
    "versions": {"torch": "2.14.1", "onnx": "1.23.2", "onnxruntime": "1.32.0",
                 "python": "3.11.7"},
}


def _write(tmp_path: Path, d: dict) -> Path:
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps(d))
    return p


def test_round_trip(tmp_path: Path) -> None:
    m = load_manifest(_write(tmp_path, GOOD))
    assert m.to_json() == GOOD
    assert m.spec.size == 256 and m.threshold == 0.5
    out = tmp_path / "again"
    out.mkdir()
    write_manifest(m, out)
    assert json.loads((out / "manifest.json").read_text()) == GOOD
    assert [p.name for p in out.iterdir()] == ["manifest.json"]  # no temporary left


def test_frozen() -> None:
    m = Manifest.from_json(copy.deepcopy(GOOD))
    with pytest.raises(AttributeError):
        m.created = "now"  # type: ignore[misc]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(schema_version=2),
     "schema_version 2 is not supported (this reader knows schema_version 1)"),
    (lambda d: d.pop("schema_version"), "schema_version None is not supported"),
    (lambda d: d["model"].pop("arch"), "model: missing field(s) ['arch']"),
    (lambda d: d["output"].update(threshold="0.5"), "output.threshold: expected float, got str"),
    (lambda d: d["artifacts"]["onnx"].update(sha256="abc"), "artifacts.onnx.sha256: expected 64"),
    (lambda d: d["artifacts"]["onnx"].update(bytes=True), "artifacts.onnx.bytes: expected int"),
    (lambda d: d["artifacts"]["onnx"].update(precision="int8"),
     "artifacts.onnx.precision: expected one of ['fp16', 'fp32'], got 'int8'"),
    (lambda d: d["artifacts"]["onnx"].update(file="../x.onnx"), "artifacts.onnx.file"),
    (lambda d: d["artifacts"].update(tflite={}), "unknown artifact 'tflite'"),
    (lambda d: d.update(extra=1), "unknown field(s) ['extra']"),
    (lambda d: d["preprocessing"].update(size=100), "preprocessing: image size must be a"),
    (lambda d: d["artifacts"]["onnx"].update(parity={"passed": True}),
     "artifacts.onnx.parity: missing field(s)"),
])
def test_bad_field_is_named(tmp_path: Path, edit, message: str) -> None:
    d = copy.deepcopy(GOOD)
    edit(d)
    path = _write(tmp_path, d)
    with pytest.raises(ValueError) as e:
        load_manifest(path)
    assert str(path) in str(e.value)
    assert message in str(e.value)


def test_not_json_and_missing(tmp_path: Path) -> None:
    p = tmp_path / "manifest.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        load_manifest(tmp_path / "elsewhere")


def test_sha256_file(tmp_path: Path) -> None:
    p = tmp_path / "blob"
    data = bytes(range(256)) * 10000
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError, match="no such file"):
        sha256_file(tmp_path / "missing")


def test_merge_keeps_other_entries_and_refuses_another_model(tmp_path: Path) -> None:
    base = Manifest.from_json(copy.deepcopy(GOOD))
    base = Manifest(**{**base.to_json(), "artifacts": {}})
    merge_artifact(tmp_path, base, "onnx", GOOD["artifacts"]["onnx"])
    ts = {**GOOD["artifacts"]["onnx"], "file": "model.torchscript.pt", "format": "torchscript"}
    ts.pop("opset")
    m = merge_artifact(tmp_path, base, "torchscript", ts)
    assert sorted(m.artifacts) == ["onnx", "torchscript"]
    assert sorted(load_manifest(tmp_path).artifacts) == ["onnx", "torchscript"]
    other = Manifest(**{**base.to_json(),
                        "source": {**base.source, "checkpoint_sha256": "c" * 64}})
    with pytest.raises(CarsegError, match="describes another model"):
        merge_artifact(tmp_path, other, "onnx", GOOD["artifacts"]["onnx"])
