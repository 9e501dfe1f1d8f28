"""Untrusted manifest folders: any structure, depth, type or value gives one clear, short line
from every entry point, never a crash (the bindings run inside the caller's interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, carseg_infer, native_built

from carseg.cli import main as carseg_main
from carseg.errors import CarsegError
from carseg.runtime.reference import ReferencePredictor
from export.cli import main as export_main

NAMES = ["nested_500k_deep", "over_a_megabyte", "size_a_billion", "size_a_float",
         "threshold_a_string", "file_name_100k", "not_an_object", "not_json"]
MAX_LINE = 400  # what an error message says beyond the file's path, whatever the file holds


def _one_short_line(text: str, folder: Path) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text[-2000:]
    assert len(lines[0].replace(str(folder), "")) < MAX_LINE, lines[0][:MAX_LINE]
    assert str(folder) in lines[0] or "manifest.json" in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name", NAMES)
def test_the_python_reader_refuses_with_one_short_line(name: str, hostile_manifests) -> None:
    folder = hostile_manifests[name]
    with pytest.raises((ValueError, CarsegError)) as e:
        ReferencePredictor(folder)
    _one_short_line(str(e.value), folder)


@pytest.mark.skipif(not native_built(), reason="carseg._native is not built")
@pytest.mark.parametrize("name", NAMES)
def test_the_bindings_refuse_without_crashing_the_interpreter(name: str, hostile_manifests
                                                              ) -> None:
    """In a child interpreter: a crash would be its death, not this test's."""
    folder = hostile_manifests[name]
    code = ("import carseg, sys\n"
            "try:\n    carseg.Predictor(sys.argv[1])\n"
            "except carseg.CarsegError as e:\n    print('CarsegError', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("CarsegError "), r.stdout
    _one_short_line(r.stdout.removeprefix("CarsegError "), folder)


@pytest.mark.skipif(carseg_infer() is None, reason="carseg_infer is not built")
@pytest.mark.parametrize("name", NAMES)
def test_carseg_infer_exits_2_with_one_line(name: str, hostile_manifests, hostile_images,
                                            tmp_path: Path) -> None:
    folder = hostile_manifests[name]
    r = subprocess.run([str(carseg_infer()), "infer", "--model", str(folder), "--input",
                        str(hostile_images["good.jpg"]), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    line = _one_short_line(r.stderr, folder)
    assert line.startswith("carseg_infer: error: ")


@pytest.mark.parametrize("name", ["nested_500k_deep", "size_a_billion", "file_name_100k"])
def test_carseg_cutout_and_export_verify_say_it_in_one_line(name: str, hostile_manifests,
                                                            hostile_images, tmp_path: Path,
                                                            capsys) -> None:
    folder = hostile_manifests[name]
    assert carseg_main(["cutout", str(hostile_images["good.jpg"]), "--model", str(folder),
                        "--output", str(tmp_path / "o")]) == 2
    _one_short_line(capsys.readouterr().err, folder)
    assert export_main(["verify", str(folder)]) == 2
    _one_short_line(capsys.readouterr().err, folder)


@pytest.mark.skipif(carseg_infer() is None, reason="carseg_infer is not built")
def test_a_model_file_that_does_not_load_is_one_line_unless_verbose(junk_model: Path,
                                                                    hostile_images,
                                                                    tmp_path: Path) -> None:
    """The hash matches (the manifest was written for the junk), the load fails: one line
    naming the file; --verbose adds what torch said in full. The report is written anyway."""
    args = [str(carseg_infer()), "infer", "--model", str(junk_model), "--input",
            str(hostile_images["good.jpg"]), "--output", str(tmp_path / "o"), "--report",
            str(tmp_path / "report.json")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"carseg_infer: error: {junk_model / 'model.torchscript.pt'}: "
                               f"cannot load TorchScript")
    assert lines[1:] == ["(--verbose shows the full error)"]
    assert len(lines[0].replace(str(junk_model), "")) < MAX_LINE
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is False and "cannot load TorchScript" in report["error"]
    verbose = subprocess.run(args + ["--verbose"], capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 2 and len(verbose.stderr.splitlines()) > 2


def test_the_python_predictor_loads_the_bytes_it_checked(tiny_artifacts: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    """No second open of the path after the hash check: the model is built from the checked
    bytes, so swapping the file in between changes nothing."""
    import shutil

    import carseg.runtime.reference as reference

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    real_loader = reference.load_backend

    def swap_then_load(path, *args, **kwargs):
        Path(path).write_bytes(b"swapped after the check")
        return real_loader(path, *args, **kwargs)

    monkeypatch.setattr(reference, "load_backend", swap_then_load)
    p = ReferencePredictor(art)  # loads what was hashed, not what is on disk now
    mask = p.predict(np.zeros((40, 60, 3), np.uint8))
    assert mask.shape == (40, 60)


def test_serve_refuses_a_folder_it_cannot_load_with_the_real_cause(junk_model: Path) -> None:
    pytest.importorskip("ray.serve", reason="the `scale` extra is not installed")
    from carseg.apps.serve import build_app

    with pytest.raises(CarsegError, match="model.torchscript.pt: cannot load as TorchScript"):
        build_app(junk_model)


def test_the_trust_boundary_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Security and limits" in readme
    assert "AOTInductor" in readme.split("## Security and limits")[1]
