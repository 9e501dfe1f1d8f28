"""carseg cutout: full-resolution masks and cutouts, every backend alike, bad files reported."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import carseg_infer, copy_photos, native_built, write_bad_photos, write_odd_photos
from PIL import Image

from carseg.cli import main
from carseg.io.images import read_mask, read_rgb

BACKENDS = ["torchscript", "onnx", "aoti", "native"]
# The Python path (torchscript) and libcarseg's pipeline (native) both.
PIPELINES = [pytest.param("torchscript"),
             pytest.param("native", marks=pytest.mark.skipif(
                 not native_built(), reason="carseg._native is not built"))]


@pytest.fixture()
def photos(tiny_data: Path, tmp_path: Path) -> Path:
    return copy_photos(tiny_data, tmp_path / "photos", 4)


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: read_mask(p) for p in sorted(out.glob("*_mask.png"))}


def test_every_backend_gives_the_same_masks(photos: Path, tiny_artifacts_all: Path,
                                            tmp_path: Path) -> None:
    results = {}
    for backend in BACKENDS:
        if backend == "native" and not native_built():
            continue
        out = tmp_path / backend
        assert main(["cutout", str(photos), "--model", str(tiny_artifacts_all), "--output",
                     str(out), "--backend", backend]) == 0
        results[backend] = _masks(out)
        assert len(results[backend]) == 4
        for photo in photos.iterdir():
            rgb = read_rgb(photo)
            mask = results[backend][f"{photo.stem}_mask.png"]
            assert mask.shape == rgb.shape[:2]  # the photo's own resolution
            cut = read_rgb(out / f"{photo.stem}_cutout.jpg")
            assert cut.shape == rgb.shape
            bg = mask == 0
            if bg.any():  # background is white (JPEG: within a few levels)
                assert np.median(cut[bg]) >= 250
    ref = results["torchscript"]
    for backend, masks in results.items():
        for name, m in masks.items():
            r = ref[name].astype(bool)
            iou = (r & m.astype(bool)).sum() / max(1, (r | m.astype(bool)).sum())
            assert iou >= 0.999, (backend, name, iou)


@pytest.mark.parametrize("backend", PIPELINES)
def test_transparent_cutout_has_the_mask_as_alpha(photos: Path, tiny_artifacts: Path,
                                                  tmp_path: Path, backend: str) -> None:
    out = tmp_path / "out"
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output", str(out),
                 "--background", "transparent", "--backend", backend]) == 0
    for photo in photos.iterdir():
        rgba = np.asarray(Image.open(out / f"{photo.stem}_cutout.png"))
        mask = read_mask(out / f"{photo.stem}_mask.png")
        assert rgba.shape == (*mask.shape, 4)
        assert np.array_equal(rgba[..., 3] > 0, mask > 0)
        car = mask > 0
        assert np.array_equal(rgba[..., :3][car], read_rgb(photo)[car])


@pytest.mark.parametrize("backend", PIPELINES)
def test_bad_files_are_reported_and_the_rest_written(photos: Path, tiny_artifacts: Path,
                                                     tmp_path: Path, capsys, backend: str
                                                     ) -> None:
    bad = write_bad_photos(photos, next(photos.glob("*.jpg")))
    write_odd_photos(photos)
    out = tmp_path / "out"
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output",
                 str(out), "--backend", backend]) == 1
    err = capsys.readouterr().err
    for name, words in bad.items():
        line = next(ln for ln in err.splitlines() if f"{photos / name}:" in ln)
        assert line.startswith(f"carseg cutout: error: {photos / name}: ") and words in line
    written = sorted(p.name for p in out.iterdir())
    assert not [n for n in written if n.startswith(".")]  # no temporaries left
    stems = sorted({n.rsplit("_", 1)[0] for n in written})
    assert stems == sorted(p.stem for p in photos.iterdir() if p.name not in bad)
    assert read_mask(out / "deep16_mask.png").shape == (40, 60)
    assert read_rgb(out / "rgba_cutout.jpg").shape == (40, 60, 3)


def test_native_backend_writes_what_carseg_infer_writes(photos: Path, tiny_artifacts: Path,
                                                        tmp_path: Path) -> None:
    """One pipeline: `carseg cutout --backend native` and `carseg_infer infer --exact` (the
    library's op-for-op default, as the bindings) write the same bytes."""
    infer = carseg_infer()
    if not native_built() or infer is None:
        pytest.skip("carseg._native or carseg_infer is not built")
    for background in ("white", "transparent"):
        ours, theirs = tmp_path / f"cutout_{background}", tmp_path / f"infer_{background}"
        assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output",
                     str(ours), "--backend", "native", "--background", background]) == 0
        subprocess.run([str(infer), "infer", "--model", str(tiny_artifacts), "--input",
                        str(photos), "--output", str(theirs), "--exact", "--cutout",
                        background], check=True, capture_output=True, timeout=300)
        names = sorted(p.name for p in ours.iterdir())
        assert names == sorted(p.name for p in theirs.iterdir()) and len(names) == 8
        for name in names:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


def test_unwritable_output_and_missing_backend(photos: Path, tiny_artifacts: Path,
                                               tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output",
                 str(blocker / "out")]) == 2
    assert "cannot create the output folder (a file is in the way)" in capsys.readouterr().err
    assert main(["cutout", str(photos), "--model", str(tmp_path), "--output",
                 str(tmp_path / "o")]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_output_inside_the_input_folder_is_not_read_back(photos: Path, tiny_artifacts: Path
                                                         ) -> None:
    for extra in ([], ["--overwrite"]):  # the second run must not segment the first's outputs
        assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output",
                     str(photos), *extra]) == 0
    names = sorted(p.name for p in photos.iterdir())
    assert len(names) == 4 * 3 and not [n for n in names if "_mask_" in n or "_cutout_" in n]
