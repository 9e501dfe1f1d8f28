"""manifest.json's writer: what the exporter records, merged into a folder atomically.

The reader and its checks are carseg.runtime.manifest (every consumer reads through it); the
names below are re-exported from there so that `export.manifest` still offers the whole
contract to the exporter's own callers.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from carseg.errors import CarsegError
from carseg.io.files import write_atomic
from carseg.runtime.manifest import (
    ARTIFACT_NAMES,
    FORMATS,
    MANIFEST_NAME,
    PRECISIONS,
    SCHEMA_VERSION,
    Manifest,
    load_manifest,
    sha256_file,
)

__all__ = ["ARTIFACT_NAMES", "FORMATS", "MANIFEST_NAME", "PRECISIONS", "SCHEMA_VERSION", "Manifest",
           "check_compatible", "load_manifest", "merge_artifact", "sha256_file", "utc_now",
           "with_artifact", "with_parity", "write_manifest"]


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")


def with_artifact(manifest: Manifest, name: str, entry: dict[str, Any]) -> Manifest:
    """A copy of `manifest` with artifact `name` added or replaced."""
    arts = copy.deepcopy(manifest.artifacts)
    arts[name] = copy.deepcopy(entry)
    return Manifest(**{**manifest.to_json(), "artifacts": arts})


def with_parity(manifest: Manifest, name: str, parity: dict[str, Any] | None) -> Manifest:
    """A copy of `manifest` with artifact `name`'s parity fields replaced."""
    entry = dict(manifest.artifact(name))
    entry["parity"] = copy.deepcopy(parity)
    return with_artifact(manifest, name, entry)


def write_manifest(manifest: Manifest, folder: str | Path) -> Path:
    """Write folder/manifest.json atomically (temporary file in the folder, then rename)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    Manifest.from_json(manifest.to_json(), source=str(path))  # never write what we can't read
    write_atomic(path, json.dumps(manifest.to_json(), indent=2) + "\n")
    return path


def merge_artifact(folder: str | Path, base: Manifest, name: str,
                   entry: dict[str, Any]) -> Manifest:
    """Add (or replace) one artifact in folder/manifest.json, keeping the other entries.

    `base` describes the model just exported. An existing manifest for another model
    (another checkpoint, preprocessing or I/O dtype) is refused: mixing them in one folder
    would let a consumer run a file the manifest does not describe.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if path.exists():
        old = load_manifest(path)
        check_compatible(old, base, path)
        merged = Manifest(**{**base.to_json(), "artifacts": old.artifacts,
                             "created": old.created})
    else:
        merged = base
    merged = with_artifact(merged, name, entry)
    write_manifest(merged, folder)
    return merged


def check_compatible(old: Manifest, new: Manifest, path: Path) -> None:
    if old.source["checkpoint_sha256"] != new.source["checkpoint_sha256"]:
        raise CarsegError(
            f"{path}: describes another model (checkpoint {old.source['checkpoint']}, sha256 "
            f"{old.source['checkpoint_sha256'][:12]}…, now {new.source['checkpoint']}, "
            f"{new.source['checkpoint_sha256'][:12]}…); use another --out folder or delete it")
    if old.preprocessing != new.preprocessing:
        raise CarsegError(f"{path}: has other preprocessing ({old.preprocessing}); "
                          f"use another --out folder")
    if old.input["dtype"] != new.input["dtype"]:
        raise CarsegError(
            f"{path}: holds {old.input['dtype']} artifacts; a folder holds one precision "
            f"(its input dtype is {old.input['dtype']}), so write {new.input['dtype']} "
            f"artifacts to another --out folder")
