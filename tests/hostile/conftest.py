"""Hostile inputs, one fixture a class, each made here (issue: nothing crashes, hangs, leaks or
overwrites). Every entry point gets the same files: carseg_infer, carseg.Predictor, carseg
cutout, carseg batch, carseg serve and python -m export verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import jpeg_with_scans, manifest_variant
from PIL import Image


@pytest.fixture(scope="session")
def hostile_manifests(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> dict[str, Path]:
    """Artifact folders whose manifest.json is hostile, by defect: each the tiny artifacts with
    one thing wrong."""
    base = json.loads((tiny_artifacts / "manifest.json").read_text())
    root = tmp_path_factory.mktemp("hostile_manifests")

    def folder(name: str, text: str) -> Path:
        d = manifest_variant(tiny_artifacts, root / name)
        (d / "manifest.json").write_text(text)
        return d

    def edited(path: list[str], value) -> str:
        m = json.loads(json.dumps(base))
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return json.dumps(m)

    return {
        "nested_500k_deep": folder("nested_500k_deep", "[" * 500_000 + "]" * 500_000),
        "over_a_megabyte": folder("over_a_megabyte", edited(["versions", "pad"], "x" * (2 << 20))),
        "size_a_billion": folder("size_a_billion", edited(["preprocessing", "size"], 10**9)),
        "size_a_float": folder("size_a_float", edited(["preprocessing", "size"], 256.5)),
        "threshold_a_string": folder("threshold_a_string",
                                     edited(["output", "threshold"], "half")),
        "file_name_100k": folder("file_name_100k",
                                 edited(["artifacts", "torchscript", "file"], "a" * 100_000)),
        "not_an_object": folder("not_an_object", "[1, 2, 3]"),
        "not_json": folder("not_json", "{\"schema_version\": 1, " + "x" * 5000),
    }


@pytest.fixture(scope="session")
def junk_model(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact folder whose TorchScript file is junk, with the junk's own sha256 in the
    manifest: the hash check passes, the load must fail with a clear line."""
    import hashlib

    d = tmp_path_factory.mktemp("junk_model") / "art"
    shutil.copytree(tiny_artifacts, d)
    junk = b"PK\x03\x04 not a zip, not a model" * 100
    (d / "model.torchscript.pt").write_bytes(junk)
    m = json.loads((d / "manifest.json").read_text())
    m["artifacts"]["torchscript"]["sha256"] = hashlib.sha256(junk).hexdigest()
    m["artifacts"].pop("onnx", None)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.fixture(scope="session")
def hostile_images(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Image files that are hostile or just unusual, by defect, plus one good photo."""
    root = tmp_path_factory.mktemp("hostile_images")
    good = sorted((tiny_data / "train").glob("*.jpg"))[0]
    out = {"good.jpg": root / "good.jpg"}
    shutil.copy(good, out["good.jpg"])
    rgb = np.asarray(Image.open(good).convert("RGB"))
    (root / "scans_3000.jpg").write_bytes(jpeg_with_scans(good.read_bytes(), 3000))
    out["scans_3000.jpg"] = root / "scans_3000.jpg"
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=92)
    out["cmyk.jpg"] = root / "cmyk.jpg"
    Image.fromarray(rgb).save(root / "tiff_named.jpg", format="TIFF")
    out["tiff_named.jpg"] = root / "tiff_named.jpg"
    Image.fromarray(np.full((8, 66_000, 3), 90, np.uint8)).save(root / "wider_than_jpeg.png")
    out["wider_than_jpeg.png"] = root / "wider_than_jpeg.png"
    return out
