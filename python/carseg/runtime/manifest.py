"""manifest.json, schema version 1 (docs/manifest.md): the reader and its checks.

The manifest is the only thing a consumer needs besides the model file. It is a frozen
dataclass here; `load_manifest` checks the schema version and names any field that is
missing, unknown or of the wrong type, so a consumer never gets a half-understood folder;
`model_bytes` hands out an artifact's bytes only after their sha256 matched. The writer lives
with the exporter (export.manifest), which imports this.

A manifest is untrusted input: at most MAX_MANIFEST_BYTES and MAX_DEPTH levels of nesting,
every field checked for type and range, and an error message repeats at most a few dozen
characters of it. The model files it names are another matter: an AOTInductor package is native
code that runs when it is loaded, so an artifact folder must come from someone you trust;
TorchScript (and ONNX) is the safer choice for a folder you did not make.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carseg.errors import CarsegError, DataError
from carseg.io.images import read_bytes
from carseg.runtime.preprocess import PreprocessSpec, bounded_names
from carseg.runtime.refine import RefineSpec

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # libcarseg's limit too: a manifest is a few kilobytes
MAX_DEPTH = 16  # the schema needs 5
MAX_ARTIFACT_BYTES = 4 << 30  # libcarseg's Manifest::kMaxArtifactBytes

FORMATS = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "aoti": "model.pt2"}
PRECISIONS = {"fp32": "float32", "fp16": "float16"}  # a folder's: its input dtype
# The artifact names a manifest may hold: each format's own artifact (named as its format, in
# the folder's precision), and onnx_int8, the statically quantized ONNX model
# (`python -m export int8`, format onnx, precision int8), fp32 in and out.
INT8_NAME, INT8_FILE = "onnx_int8", "model.int8.onnx"
ARTIFACT_NAMES = (*FORMATS, INT8_NAME)

_TOP = {"schema_version": int, "carseg_version": str, "created": str, "model": dict,
        "source": dict, "preprocessing": dict, "input": dict, "output": dict,
        "artifacts": dict, "versions": dict}
_MODEL = {"arch": str, "encoder_name": str, "classes": int, "in_channels": int,
          "parameters": int}
_SOURCE = {"logdir": str, "checkpoint": str, "checkpoint_sha256": str, "valid": dict}
_INPUT = {"name": str, "dtype": str, "shape": list}
_OUTPUT = {"name": str, "dtype": str, "shape": list, "kind": str, "activation": str,
           "threshold": float}
_ARTIFACT = {"file": str, "format": str, "precision": str, "device": str, "sha256": str,
             "bytes": int, "dynamic": dict, "export_seconds": float, "parity": (dict, type(None))}
_ARTIFACT_OPTIONAL = {"opset": int, "calibration": dict}
_CALIBRATION = {"source": str, "images": int, "method": str, "activations": str,
                "weights": str}
_PARITY = {"passed": bool, "max_abs_diff": (float, type(None)), "mask_iou": (float, type(None)),
           "tolerance": dict, "cases": list, "checked_at": str}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    return h.hexdigest()


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join("null" if x is type(None) else x.__name__ for x in t)
    return t.__name__


def _check_fields(where: str, d: Any, fields: dict[str, Any],
                  optional: dict[str, Any] | None = None) -> None:
    """Raise ValueError naming the first missing/unknown/mistyped field of `d`."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    optional = optional or {}
    missing = sorted(set(fields) - set(d))
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    unknown = sorted(set(d) - set(fields) - set(optional))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {bounded_names(unknown)}")
    for k, t in {**fields, **optional}.items():
        if k not in d:
            continue
        v = d[k]
        ok_types = t if isinstance(t, tuple) else (t,)
        # JSON has one number type: accept an int where a float is expected, never a bool
        if float in ok_types and isinstance(v, int) and not isinstance(v, bool):
            continue
        if isinstance(v, bool) and bool not in ok_types:
            ok = False
        else:
            ok = isinstance(v, ok_types)
        if not ok:
            raise ValueError(f"{where}.{k}: expected {_type_name(t)}, got "
                             f"{type(v).__name__} ({v!r:.60})")


@dataclass(frozen=True)
class Manifest:
    """One artifact folder's manifest.json. Sections are plain JSON dicts, checked on load."""

    carseg_version: str
    created: str
    model: dict[str, Any]
    source: dict[str, Any]
    preprocessing: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    # ---- reading -------------------------------------------------------------------------
    @classmethod
    def from_json(cls, d: Any, source: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ValueError(f"{source}: schema_version {version!r:.60} is not supported "
                             f"(this reader knows schema_version {SCHEMA_VERSION})")
        _check_fields(source, d, _TOP)
        _check_fields(f"{source}: model", d["model"], _MODEL)
        _check_fields(f"{source}: source", d["source"], _SOURCE)
        _check_fields(f"{source}: input", d["input"], _INPUT)
        _check_fields(f"{source}: output", d["output"], _OUTPUT, {"refine": dict})
        if "refine" in d["output"]:
            try:
                RefineSpec.from_json(d["output"]["refine"])
            except ValueError as e:
                raise ValueError(f"{source}: {e}") from None
        try:
            PreprocessSpec.from_json(d["preprocessing"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: preprocessing: {e}") from None
        for name, a in d["artifacts"].items():
            where = f"{source}: artifacts.{name}"
            if name not in ARTIFACT_NAMES:
                raise ValueError(f"{source}: artifacts: unknown artifact {name!r:.60}; "
                                 f"expected one of {sorted(ARTIFACT_NAMES)}")
            _check_fields(where, a, _ARTIFACT, _ARTIFACT_OPTIONAL)
            fmt, precisions = ("onnx", {"int8"}) if name == INT8_NAME else (name, PRECISIONS)
            if a["format"] != fmt:
                raise ValueError(f"{where}.format: expected {fmt!r}, got {a['format']!r:.60}")
            if a["precision"] not in precisions:
                raise ValueError(f"{where}.precision: expected one of {sorted(precisions)}, "
                                 f"got {a['precision']!r:.60}")
            if name == INT8_NAME:
                if "calibration" not in a:
                    raise ValueError(f"{where}: an int8 artifact records its calibration")
                _check_fields(f"{where}.calibration", a["calibration"], _CALIBRATION)
            elif "calibration" in a:
                raise ValueError(f"{where}.calibration: only the int8 artifact ({INT8_NAME}) "
                                 f"is calibrated; {name} is {a['precision']}")
            if not a["file"] or len(a["file"]) > 255 or Path(a["file"]).name != a["file"] \
                    or a["file"] in (".", ".."):
                raise ValueError(f"{where}.file: expected a file name in the folder, "
                                 f"got {a['file']!r:.60}")
            if len(a["sha256"]) != 64 or set(a["sha256"]) - set("0123456789abcdef"):
                raise ValueError(f"{where}.sha256: expected 64 hex digits, got "
                                 f"{a['sha256']!r:.60}")
            _check_fields(f"{where}.dynamic", a["dynamic"], {"batch": bool, "spatial": bool})
            if a["parity"] is not None:
                _check_fields(f"{where}.parity", a["parity"], _PARITY)
        return cls(**{k: copy.deepcopy(v) for k, v in d.items()})

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "carseg_version": self.carseg_version,
            "created": self.created,
            "model": copy.deepcopy(self.model),
            "source": copy.deepcopy(self.source),
            "preprocessing": copy.deepcopy(self.preprocessing),
            "input": copy.deepcopy(self.input),
            "output": copy.deepcopy(self.output),
            "artifacts": copy.deepcopy(self.artifacts),
            "versions": copy.deepcopy(self.versions),
        }

    # ---- conveniences --------------------------------------------------------------------
    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_json(self.preprocessing)

    @property
    def threshold(self) -> float:
        return float(self.output["threshold"])

    @property
    def refine(self) -> RefineSpec | None:
        """The full-resolution refinement every consumer applies, or None (a manifest written
        before it existed, or a config that turned it off)."""
        d = self.output.get("refine")
        return None if d is None else RefineSpec.from_json(d)

    def artifact(self, name: str, source: str = MANIFEST_NAME) -> dict[str, Any]:
        if name not in self.artifacts:
            raise ValueError(f"{source}: no {name!r} artifact (has {sorted(self.artifacts)})")
        return self.artifacts[name]


def parity_passed(entry: Any) -> bool | None:
    """An artifact entry's verify result: True passed, False refused, None never verified (or
    not an entry)."""
    parity = entry.get("parity") if isinstance(entry, dict) else None
    passed = parity.get("passed") if isinstance(parity, dict) else None
    return passed if isinstance(passed, bool) else None


def auto_precision(manifest: Manifest, backend: str, device: str) -> str:
    """What precision "auto" runs, as libcarseg resolves it (Precision::kAuto): int8 on the CPU
    where the manifest lists the int8 model and `python -m export verify` passed it (its masks
    kept the IoU tolerance against eager fp32 on real photos) and the backend runs ONNX
    ("onnx" in Python, "native" through ONNX Runtime); otherwise fp32."""
    verified = parity_passed(manifest.artifacts.get(INT8_NAME)) is True
    if verified and backend in ("onnx", "native") and str(device) == "cpu":
        return "int8"
    return "fp32"


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest.json (a folder is taken to hold one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (export the model with `python -m "
                                f"export` first)")
    data = read_bytes(path, MAX_MANIFEST_BYTES)  # a regular file, and not a huge one
    try:
        d = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({str(e)[:120]})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    if _depth(d) > MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    return Manifest.from_json(d, source=str(path))


def _depth(value: Any) -> int:
    """How deeply JSON containers nest in `value` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, depth)
            stack.extend((x, depth + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def model_bytes(model_dir: str | Path, manifest: Manifest, name: str) -> tuple[Path, bytes]:
    """The file of artifact `name` and its bytes, read once and checked against the manifest's
    sha256: a consumer loads exactly the bytes that were checked (no second open of the path),
    and never a model the manifest does not describe."""
    source = str(Path(model_dir) / MANIFEST_NAME)
    entry = manifest.artifact(name, source=source)
    path = Path(model_dir) / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file named in {source} not found")
    try:
        data = read_bytes(path, MAX_ARTIFACT_BYTES)
    except DataError as e:
        raise CarsegError(str(e)) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["sha256"]:
        raise CarsegError(f"{path}: sha256 mismatch: manifest expects {entry['sha256']}, file "
                          f"has {actual}; refusing to load a model the manifest does not describe")
    return path, data


def model_file(model_dir: str | Path, manifest: Manifest, name: str) -> Path:
    """model_bytes's path alone: the artifact's file, checked."""
    return model_bytes(model_dir, manifest, name)[0]
