"""carseg.io.names and carseg.io.files: what a run reads and writes, and how it writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carseg.errors import CarsegError
from carseg.io.files import prepare_out_dir, staged, write_atomic
from carseg.io.names import cutout_path, list_photos, mask_path, outputs_for


def test_output_names() -> None:
    out, photo = Path("/o"), Path("/in/car_01.JPG")
    assert mask_path(out, photo) == Path("/o/car_01_mask.png")
    assert cutout_path(out, photo, "white") == Path("/o/car_01_cutout.jpg")
    assert cutout_path(out, photo, "transparent") == Path("/o/car_01_cutout.png")
    assert outputs_for(photo, out, "none") == [Path("/o/car_01_mask.png")]
    assert outputs_for(photo, out, "transparent")[1].name == "car_01_cutout.png"
    assert [p.name for p in outputs_for(photo, out, "#102030", matte=True)] == [
        "car_01_mask.png", "car_01_cutout.jpg", "car_01_alpha.png"]
    with pytest.raises(ValueError, match="cutout: expected white, transparent, #RRGGBB or an "
                                         "image file, or none, got 'blue'"):
        outputs_for(photo, out, "blue")


def test_list_photos_sorts_refuses_collisions_and_skips_own_outputs(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "a.jpg", "notes.txt", "a_mask.png", "a_cutout.jpg",
                 "a_alpha.png"):
        (tmp_path / name).write_bytes(b"x")
    photos, failed = list_photos([tmp_path, tmp_path / "missing.jpg"], output=tmp_path)
    assert [p.name for p in photos] == ["a.PNG", "b.jpg"]
    reasons = {Path(f["path"]).name: f["reason"] for f in failed}
    assert reasons["missing.jpg"] == "no such file or folder"
    assert reasons["a.jpg"].startswith("same name as") and "collide" in reasons["a.jpg"]
    # in another folder, files named like outputs are photos like any other
    photos, _ = list_photos([tmp_path], output=tmp_path / "elsewhere")
    assert "a_mask.png" in {p.name for p in photos}


def test_write_atomic_leaves_only_the_file(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.txt", "text")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.txt").read_text() == "text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_staged_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), staged(tmp_path, "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    with pytest.raises(CarsegError, match="nothing was written"), staged(tmp_path, "y.bin"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_prepare_out_dir_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CarsegError, match="a file is in the way"):
        prepare_out_dir(tmp_path / "file" / "out")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(CarsegError, match="not writable"):
            prepare_out_dir(ro)
    assert prepare_out_dir(tmp_path / "new" / "deeper").is_dir()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
