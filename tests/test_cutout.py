"""carseg cutout: full-resolution masks and cutouts, every backend alike, bad files reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carseg.cli import main
from carseg.imageio import read_mask, read_rgb

BACKENDS = ["torchscript", "onnx", "aoti", "native"]


def _native_built() -> bool:
    try:
        import carseg._native  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture()
def photos(tiny_data: Path, tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for p in sorted((tiny_data / "train").glob("*.jpg"))[:4]:
        shutil.copy(p, d / p.name)
    return d


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: read_mask(p) for p in sorted(out.glob("*_mask.png"))}


def test_every_backend_gives_the_same_masks(photos: Path, tiny_artifacts_all: Path,
                                            tmp_path: Path) -> None:
    results = {}
    for backend in BACKENDS:
        if backend == "native" and not _native_built():
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


def test_transparent_cutout_has_the_mask_as_alpha(photos: Path, tiny_artifacts: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output", str(out),
                 "--background", "transparent"]) == 0
    for photo in photos.iterdir():
        rgba = np.asarray(Image.open(out / f"{photo.stem}_cutout.png"))
        mask = read_mask(out / f"{photo.stem}_mask.png")
        assert rgba.shape == (*mask.shape, 4)
        assert np.array_equal(rgba[..., 3] > 0, mask > 0)
        car = mask > 0
        assert np.array_equal(rgba[..., :3][car], read_rgb(photo)[car])


def test_bad_files_are_reported_and_the_rest_written(photos: Path, tiny_artifacts: Path,
                                                     tmp_path: Path, capsys) -> None:
    (photos / "notes.jpg").write_text("hello")
    (photos / "empty.png").write_bytes(b"")
    gray = np.zeros((40, 60), np.uint8)
    gray[10:30, 20:40] = 200
    Image.fromarray(gray).save(photos / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(photos / "deep16.png")
    out = tmp_path / "out"
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output",
                 str(out)]) == 1
    err = capsys.readouterr().err
    assert f"carseg cutout: error: {photos / 'notes.jpg'}: not a readable image" in err
    assert f"carseg cutout: error: {photos / 'empty.png'}: empty file" in err
    written = sorted(p.name for p in out.iterdir())
    assert not [n for n in written if n.startswith(".")]  # no temporaries left
    stems = sorted({n.rsplit("_", 1)[0] for n in written})
    assert stems == sorted(p.stem for p in photos.iterdir()
                           if p.name not in ("notes.jpg", "empty.png"))
    assert read_mask(out / "deep16_mask.png").shape == (40, 60)


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
    for _ in range(2):  # the second run must not segment the first run's masks and cutouts
        assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output",
                     str(photos)]) == 0
    names = sorted(p.name for p in photos.iterdir())
    assert len(names) == 4 * 3 and not [n for n in names if "_mask_" in n or "_cutout_" in n]
