"""Untrusted image bytes: decoding is bounded in cost and memory, every decoder failure is that
file's error (the next file goes on), only the formats carseg names are decoded, C++ and Python
give one photo the same answer, and a photo too large for its output is refused before any
output of it is written."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import carseg_infer, native_built
from PIL import Image

from carseg.cli import main as carseg_main
from carseg.errors import DataError
from carseg.io.images import MAX_JPEG_SCANS, jpeg_scans, read_rgb

PIPELINES = ["torchscript", pytest.param("native", marks=pytest.mark.skipif(
    not native_built(), reason="carseg._native is not built"))]


def test_the_scan_counter_counts_and_stops_early(hostile_images) -> None:
    good = hostile_images["good.jpg"].read_bytes()
    assert jpeg_scans(good) == 1
    progressive = hostile_images["good.jpg"].parent / "progressive.jpg"
    Image.open(hostile_images["good.jpg"]).save(progressive, progressive=True)
    assert 2 < jpeg_scans(progressive.read_bytes()) < 20
    assert read_rgb(progressive).shape[2] == 3  # a real progressive JPEG is not refused
    assert jpeg_scans(hostile_images["scans_3000.jpg"].read_bytes()) == MAX_JPEG_SCANS + 1


def test_python_refuses_a_scan_bomb_before_decoding_it(hostile_images) -> None:
    t0 = time.monotonic()
    with pytest.raises(DataError, match=f"JPEG with over {MAX_JPEG_SCANS} scans"):
        read_rgb(hostile_images["scans_3000.jpg"])
    assert time.monotonic() - t0 < 2.0


def test_only_the_formats_carseg_names_are_decoded(hostile_images) -> None:
    """A TIFF named .jpg: Pillow could read it, libcarseg cannot; neither does."""
    with pytest.raises(DataError, match="not a JPEG, PNG, GIF or BMP"):
        read_rgb(hostile_images["tiff_named.jpg"])


@pytest.mark.parametrize("backend", PIPELINES)
def test_each_bad_photo_is_its_own_error_and_the_rest_go_on(backend: str, hostile_images,
                                                            tmp_path: Path, capsys,
                                                            tiny_artifacts: Path) -> None:
    out = tmp_path / "out"
    photos = [hostile_images[n] for n in ("scans_3000.jpg", "tiff_named.jpg", "good.jpg",
                                          "cmyk.jpg")]
    assert carseg_main(["cutout", *map(str, photos), "--model", str(tiny_artifacts), "--output",
                        str(out), "--backend", backend, "--background", "transparent"]) == 1
    err = capsys.readouterr().err
    assert "scans_3000.jpg: JPEG with over 100 scans" in err
    assert "tiff_named.jpg: not a" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "cmyk_cutout.png", "cmyk_mask.png", "good_cutout.png", "good_mask.png"]


@pytest.mark.parametrize("backend", PIPELINES)
def test_a_png_with_a_bad_header_checksum_is_corrupt_in_cpp_and_python(
        backend: str, hostile_images, tmp_path: Path, capsys, tiny_artifacts: Path) -> None:
    """Pillow checks the checksums before the image data; libcarseg must give the same answer
    (stb alone would decode the file)."""
    Image.open(hostile_images["good.jpg"]).save(tmp_path / "good.png")
    bad = bytearray((tmp_path / "good.png").read_bytes())
    bad[29] ^= 0xFF  # IHDR's checksum
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad_crc.png").write_bytes(bytes(bad))
    assert carseg_main(["cutout", str(tmp_path / "in" / "bad_crc.png"), "--model",
                        str(tiny_artifacts), "--output", str(tmp_path / "out"), "--backend",
                        backend]) == 1
    err = capsys.readouterr().err
    assert "bad_crc.png: corrupt" in err, err
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.skipif(not native_built(), reason="carseg._native is not built")
def test_a_cmyk_jpeg_gets_the_same_pixels_from_cpp_and_python(hostile_images,
                                                              tmp_path: Path,
                                                              tiny_artifacts: Path) -> None:
    """A transparent cutout without refinement keeps the photo's RGB everywhere (with it, the
    soft edge's colour is decontaminated): libcarseg's decode of a CMYK JPEG (the native
    pipeline) equals Pillow's (carseg.io.images), pixel for pixel."""
    cmyk = hostile_images["cmyk.jpg"]
    assert carseg_main(["cutout", str(cmyk), "--model", str(tiny_artifacts), "--output",
                        str(tmp_path / "c"), "--backend", "native", "--background",
                        "transparent", "--no-refine"]) == 0
    cpp = np.asarray(Image.open(tmp_path / "c" / "cmyk_cutout.png"))[..., :3]
    assert np.array_equal(cpp, read_rgb(cmyk))


@pytest.mark.parametrize("backend", PIPELINES)
def test_too_wide_for_a_jpeg_cutout_is_refused_before_anything_is_written(
        backend: str, hostile_images, tmp_path: Path, capsys, tiny_artifacts: Path) -> None:
    wide = hostile_images["wider_than_jpeg.png"]
    assert carseg_main(["cutout", str(wide), "--model", str(tiny_artifacts), "--output",
                        str(tmp_path / "w"), "--backend", backend]) == 1
    assert "too large for a JPEG cutout" in capsys.readouterr().err
    assert list((tmp_path / "w").iterdir()) == []  # not even its mask
    assert carseg_main(["cutout", str(wide), "--model", str(tiny_artifacts), "--output",
                        str(tmp_path / "t"), "--backend", backend, "--background",
                        "transparent"]) == 0  # a PNG cutout has no such limit


@pytest.mark.skipif(carseg_infer() is None, reason="carseg_infer is not built")
def test_carseg_infer_bounds_memory_and_reports_each_bad_photo(hostile_images,
                                                               tmp_path: Path,
                                                               tiny_artifacts: Path) -> None:
    """--max-memory caps decoded photos in flight; with the smallest cap a run still finishes
    (one photo at a time), and every bad file is in the report."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("good.jpg", "scans_3000.jpg", "tiff_named.jpg", "cmyk.jpg"):
        (folder / name).write_bytes(hostile_images[name].read_bytes())
    r = subprocess.run([str(carseg_infer()), "infer", "--model", str(tiny_artifacts), "--input",
                        str(folder), "--output", str(tmp_path / "out"), "--max-memory", "16",
                        "--report", str(tmp_path / "r.json")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["succeeded"] == 2 and report["failed"] == 2
    reasons = {Path(e["file"]).name: e["error"] for e in report["errors"]}
    assert "scans" in reasons["scans_3000.jpg"] and "not an image" in reasons["tiff_named.jpg"]
