"""carseg batch on Ray Data: one output per good photo, bad ones reported, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    BAD_PHOTOS,
    copy_photos,
    native_built,
    oracle_artifacts,
    oracle_photo,
    write_bad_photos,
)

pytest.importorskip("ray.data", reason="the `scale` extra (ray[data]) is not installed")

CARSEG = Path(sys.executable).parent / "carseg"


@pytest.fixture()
def photos(tiny_data: Path, tmp_path: Path) -> Path:
    folder = copy_photos(tiny_data, tmp_path / "photos", 12)
    write_bad_photos(folder, next(folder.glob("*_01.jpg")))
    return folder


def _run(photos: Path, model: Path, out: Path, report: Path, backend: str = "torchscript",
         **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [str(CARSEG), "batch", str(photos), "--model", str(model), "--output", str(out),
         "--report", str(report), "--batch-size", "2", "--workers", "1", "--backend", backend],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _good(photos: Path) -> list[Path]:
    return sorted(p for p in photos.glob("*.jpg") if p.name not in BAD_PHOTOS)



def _check_outputs(out: Path, good: list[Path], reference=None) -> None:
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([f"{p.stem}_mask.png" for p in good] + [f"{p.stem}_cutout.jpg" for p in good])
    assert names == expected  # exactly one mask and one cutout per good photo, nothing else
    from carseg.io.images import read_mask, read_rgb

    for p in good:
        m = read_mask(out / f"{p.stem}_mask.png")
        assert m.shape == read_rgb(p).shape[:2] and set(np.unique(m)) <= {0, 1}
        if reference is not None:  # the reference predictor's mask for the same photo
            want = reference.predict(read_rgb(p)).astype(bool)
            union = (want | (m > 0)).sum()
            assert union == 0 or (want & (m > 0)).sum() / union >= 0.999, p.name


@pytest.mark.parametrize("backend", ["torchscript", "native"])
def test_good_and_bad_photos(photos: Path, tiny_artifacts: Path, tmp_path: Path,
                             backend: str) -> None:
    """Python backends decode, predict and write in Ray tasks; native runs libcarseg's
    pipeline in each actor. Either way: the reference's masks, each bad file named."""
    if backend == "native" and not native_built():
        pytest.skip("carseg._native is not built")
    from carseg.runtime.reference import ReferencePredictor

    out, report = tmp_path / "out", tmp_path / "report.json"
    proc = _run(photos, tiny_artifacts, out, report, backend)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-2000:]
    r = json.loads(report.read_text())
    good = _good(photos)
    assert r["counts"] == {"done": 12, "skipped": 0, "failed": len(BAD_PHOTOS)}
    reasons = {Path(f["path"]).name: f["reason"] for f in r["failed"]}
    for name, words in BAD_PHOTOS.items():
        assert words in reasons[name], reasons[name]
    for name in reasons:
        assert f"carseg batch: error: {photos / name}" in err
    runs = "native (onnx)" if backend == "native" else "torchscript"
    assert f"carseg batch: each actor runs {runs} fp32 on cpu, refinement on" in err, err[-2000:]
    _check_outputs(out, good, ReferencePredictor(tiny_artifacts))


@pytest.fixture(scope="module")
def oracle(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The saturation oracle (helpers.oracle_artifacts): sure of itself away from the edge."""
    return oracle_artifacts(tiny_artifacts, tmp_path_factory.mktemp("oracle") / "art")


@pytest.mark.parametrize(("backend", "backdrop"), [("native", "#2060c0"),
                                                   ("torchscript", "image")])
def test_a_colour_or_an_image_behind_the_car(backend: str, backdrop: str, oracle: Path,
                                             tmp_path: Path) -> None:
    """--cutout takes what carseg cutout's --background takes: a colour, or an image resized to
    each photo. Away from the car's edge the cutout is that colour outside the car and the
    photo inside it (within JPEG's error)."""
    if backend == "native" and not native_built():
        pytest.skip("carseg._native is not built")
    from PIL import Image
    from scipy import ndimage

    from carseg.io.images import read_mask, read_rgb

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (h, w) in enumerate([(160, 240), (120, 200), (97, 151)]):
        Image.fromarray(oracle_photo(h, w, i)[0]).save(photos / f"car{i}.png")
    want = (0x20, 0x60, 0xC0)
    if backdrop == "image":  # one colour, so that any resize of it is that colour
        backdrop = str(tmp_path / "green.png")
        want = (20, 200, 40)
        Image.new("RGB", (50, 30), want).save(backdrop)
    out = tmp_path / "out"
    proc = subprocess.run([str(CARSEG), "batch", str(photos), "--model", str(oracle),
                           "--output", str(out), "--batch-size", "2", "--backend", backend,
                           "--cutout", backdrop], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for p in sorted(photos.iterdir()):
        car = read_mask(out / f"{p.stem}_mask.png").astype(bool)
        outside = ~ndimage.binary_dilation(car, iterations=6)
        inside = ndimage.binary_erosion(car, iterations=6)
        assert outside.any() and inside.any(), p.name
        cut = read_rgb(out / f"{p.stem}_cutout.jpg").astype(int)
        assert np.abs(cut[outside] - np.array(want)).mean() < 4, p.name
        assert np.abs(cut[inside] - read_rgb(p).astype(int)[inside]).mean() < 6, p.name


@pytest.mark.parametrize("value", ["#12345", "blue", "junk.png"])
def test_a_cutout_it_cannot_make_is_refused_before_anything_runs(value: str, photos: Path,
                                                                 tiny_artifacts: Path,
                                                                 tmp_path: Path) -> None:
    if value == "junk.png":
        value = str(tmp_path / value)
        Path(value).write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = subprocess.run([str(CARSEG), "batch", str(photos), "--model", str(tiny_artifacts),
                           "--output", str(out), "--cutout", value],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "carseg batch: error: --cutout: " in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not list(out.iterdir())


def test_decoding_on_the_gpu_without_native_cuda_is_refused_before_anything_runs(
        photos: Path, tiny_artifacts: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([str(CARSEG), "batch", str(photos), "--model", str(tiny_artifacts),
                           "--output", str(out), "--backend", "native", "--decode", "gpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("carseg batch: error: --decode gpu decodes JPEGs with nvJPEG for the C++ pipeline "
            "on a GPU: use it with --backend native --device cuda (got --backend native "
            "--device cpu)") in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() or not list(out.iterdir())


def test_interrupted_run_then_rerun_completes_without_duplicates(
        photos: Path, tiny_artifacts: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    for bad in BAD_PHOTOS:
        (photos / bad).unlink()
    good = _good(photos)
    proc = _run(photos, tiny_artifacts, out, report, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(list(out.glob("*_mask.png"))) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a crash, not a polite stop
    proc.communicate(timeout=60)
    first = {p.name for p in out.glob("*_mask.png")}
    assert 0 < len(first), "the first run wrote nothing before it was killed"
    proc = _run(photos, tiny_artifacts, out, report)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    r = json.loads(report.read_text())
    assert r["counts"]["failed"] == 0
    assert r["counts"]["done"] + r["counts"]["skipped"] == len(good)
    assert r["counts"]["skipped"] >= 1
    assert not set(r["done"]) & set(r["skipped"])
    _check_outputs(out, good)
    # and a third run finds everything done
    proc = _run(photos, tiny_artifacts, out, report)
    proc.communicate(timeout=600)
    assert json.loads(report.read_text())["counts"] == {"done": 0, "skipped": len(good),
                                                        "failed": 0}


def test_unwritable_output_is_a_clear_error(photos: Path, tiny_artifacts: Path,
                                            tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([str(CARSEG), "batch", str(photos), "--model", str(tiny_artifacts),
                           "--output", str(blocker / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "cannot create the output folder (a file is in the way)" in proc.stderr


@pytest.mark.parametrize("where", ["init", "shutdown"])
def test_a_signal_that_ray_swallows_still_stops_the_job(where: str, photos: Path,
                                                        tiny_artifacts: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    """A SIGINT whose KeyboardInterrupt Ray's own code catches (seen: a Ctrl-C while Ray
    started, and the job ran to the end and exited 0; Ray now starts off the main thread, so
    the signal during its start is the job's) still ends the job as interrupted, and the Ray
    it started is shut down."""
    import ray

    from carseg.apps._ray import _watchdogs
    from carseg.apps.batch import run_batch

    calls: list[str] = []

    def swallowing(step: str):
        def fake(*args, **kwargs) -> None:
            calls.append(step)
            if step == where:
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(1)  # the handler runs here, between bytecodes
                except KeyboardInterrupt:
                    pass  # what Ray did with it
        return fake

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", swallowing("init"))
    monkeypatch.setattr(ray, "shutdown", swallowing("shutdown"))
    monkeypatch.setattr(ray.data, "from_items", lambda *a, **k: _NoRows())  # no Ray needed
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            run_batch([photos], tiny_artifacts, tmp_path / "out", handle_signals=True)
        # the job is over: its handlers and its stop's watchdog are gone with it
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == saved
        assert not _watchdogs
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
    assert calls == ["init", "shutdown"]
    assert not list((tmp_path / "out").glob("*_mask.png"))


class _NoRows:
    """A stand-in Ray Data dataset whose every step gives itself, and no rows."""

    def map(self, *args, **kwargs) -> _NoRows:
        return self

    map_batches = map

    def iter_rows(self):
        return iter(())
