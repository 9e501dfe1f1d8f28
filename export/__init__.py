"""carseg's export kit: TorchScript, ONNX and AOTInductor artifacts plus manifest.json.

    python -m export all --logdir logs/demo --out artifacts
    python -m export verify artifacts

Library entry points: export.api.export_artifact, export.verify.verify,
export.manifest.load_manifest / sha256_file. Imported lazily, so that `--help` does not
wait for torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MANIFEST_NAME", "SCHEMA_VERSION", "Manifest", "load_manifest", "sha256_file"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from export import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
