"""Untrusted paths: outputs are named after the input as the user named it, nothing is replaced
that the run did not write, a run's own outputs are never taken as inputs, odd names (not
UTF-8, too long) and non-regular files are each their own error, and the report is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import carseg_infer, native_built

from carseg.cli import main as carseg_main

PIPELINES = ["torchscript", pytest.param("native", marks=pytest.mark.skipif(
    not native_built(), reason="carseg._native is not built"))]


@pytest.fixture
def hostile_paths(hostile_images, tmp_path: Path) -> dict[str, Path]:
    """A folder of photos with hostile names, by defect."""
    good = hostile_images["good.jpg"]
    d = tmp_path / "photos"
    d.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(good, elsewhere / "target.jpg")
    (d / "link.jpg").symlink_to(elsewhere / "target.jpg")  # a symbolic link
    shutil.copy(good, d / "plain.jpg")
    latin1 = os.fsdecode(b"caf\xe9.jpg")  # not UTF-8
    shutil.copy(good, d / latin1)
    long_name = "n" * 245 + ".jpg"  # 249 bytes: NAME_cutout.jpg would be 260, over 255
    shutil.copy(good, d / long_name)
    os.mkfifo(tmp_path / "pipe.jpg")  # not a regular file: given by name
    return {"folder": d, "link": d / "link.jpg", "plain": d / "plain.jpg",
            "latin1": d / latin1, "long": d / long_name, "fifo": tmp_path / "pipe.jpg"}


@pytest.mark.parametrize("backend", PIPELINES)
def test_odd_names_links_and_pipes(backend: str, hostile_paths, tiny_artifacts: Path,
                                   tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = carseg_main(["cutout", str(hostile_paths["folder"]), str(hostile_paths["fifo"]),
                      "--model", str(tiny_artifacts), "--output", str(out), "--backend",
                      backend])
    err = capsys.readouterr().err
    assert rc == 1
    names = {p.name for p in out.iterdir()}
    assert {"link_mask.png", "link_cutout.jpg"} <= names  # named as the user named it
    assert not [n for n in names if n.startswith("target")]
    latin1_stem = hostile_paths["latin1"].stem
    assert {f"{latin1_stem}_mask.png", f"{latin1_stem}_cutout.jpg"} <= names
    assert "pipe.jpg: not a regular file" in err  # refused, never opened (no hang)
    assert "File name too long" in err or "name too long" in err.lower()
    assert not [n for n in names if n.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("backend", PIPELINES)
def test_nothing_is_replaced_that_the_run_did_not_write(backend: str, hostile_paths,
                                                        tiny_artifacts: Path, tmp_path: Path,
                                                        capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "plain_mask.png"
    theirs.write_bytes(b"someone else's file")
    args = ["cutout", str(hostile_paths["plain"]), str(hostile_paths["link"]), "--model",
            str(tiny_artifacts), "--output", str(out), "--backend", backend]
    assert carseg_main(args) == 1
    assert "plain_mask.png exists, and this run did not write it" in capsys.readouterr().err
    assert theirs.read_bytes() == b"someone else's file"
    assert not (out / "plain_cutout.jpg").exists()  # nothing of that photo was written
    assert (out / "link_mask.png").is_file()  # the other photo went on
    assert carseg_main(args + ["--overwrite"]) == 0  # asked for: replaced
    assert theirs.read_bytes().startswith(b"\x89PNG")


def test_a_runs_own_outputs_are_never_its_inputs(hostile_paths, tiny_artifacts: Path) -> None:
    folder = hostile_paths["folder"]
    (hostile_paths["long"]).unlink()
    for extra in ([], ["--overwrite"]):  # the second run replaces the first's outputs
        assert carseg_main(["cutout", str(folder), "--model", str(tiny_artifacts),
                            "--output", str(folder), *extra]) == 0
    names = [p.name for p in folder.iterdir()]
    assert not [n for n in names if "_mask_" in n or "_cutout_" in n]


@pytest.mark.skipif(carseg_infer() is None, reason="carseg_infer is not built")
def test_carseg_infer_writes_a_valid_report_for_names_that_are_not_utf8(
        hostile_paths, tiny_artifacts: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    r = subprocess.run([str(carseg_infer()), "infer", "--model", str(tiny_artifacts),
                        "--input", str(hostile_paths["folder"]), str(hostile_paths["fifo"]),
                        "--output", str(tmp_path / "out"), "--report", str(report)],
                       capture_output=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    data = json.loads(report.read_text(encoding="utf-8"))  # valid UTF-8 JSON throughout
    by_name = {Path(x["input"]).name: x for x in data["results"]}
    assert by_name["caf\ufffd.jpg"]["ok"]  # the byte that is not UTF-8 shown as U+FFFD
    assert not by_name["pipe.jpg"]["ok"] and "not a regular file" in by_name["pipe.jpg"]["error"]
    assert not by_name[hostile_paths["long"].name]["ok"]
    assert (tmp_path / "out" / os.fsdecode(b"caf\xe9_mask.png")).is_file()
