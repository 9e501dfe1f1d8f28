"""carseg_infer end to end: outputs, exit codes, the JSON report and parity with Python."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import BAD_PHOTOS, carseg_infer, write_bad_photos

REPO = Path(__file__).resolve().parents[2]
BUILD_FIXTURES = REPO / "build" / "py" / "cpp" / "tests" / "fixtures"


INFER = carseg_infer()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    INFER is None, reason="carseg_infer is not built (pip install -e .)")]


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photos, a random-weight TorchScript artifact folder and Python reference masks."""
    out = BUILD_FIXTURES if BUILD_FIXTURES.parent.is_dir() else tmp_path_factory.mktemp("fx")
    subprocess.run([sys.executable, str(REPO / "cpp" / "tests" / "make_fixtures.py"),
                    "--out", str(out)], check=True)
    return out


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INFER), *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def photos(fixtures: Path, tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for name in ("photo_480x640", "photo_300x200", "photo_37x53"):
        shutil.copy(fixtures / f"{name}.png", d / f"{name}.png")
    return d


def test_folder_with_bad_files_exit_1_and_report(fixtures: Path, photos: Path,
                                                 tmp_path: Path) -> None:
    jpeg = tmp_path / "photo.jpg"
    from PIL import Image
    Image.open(photos / "photo_300x200.png").convert("RGB").save(jpeg, quality=90)
    write_bad_photos(photos, jpeg)
    out, report = tmp_path / "out", tmp_path / "report.json"
    r = run("infer", "--model", fixtures / "model", "--input", photos, "--output", out,
            "--report", report, "--batch", "2")
    assert r.returncode == 1, r.stderr
    for bad, reason in BAD_PHOTOS.items():
        line = next(ln for ln in r.stderr.splitlines() if bad in ln)
        assert line.startswith(f"carseg_infer: error: {photos / bad}: "), line
        assert reason in line
    rep = json.loads(report.read_text())
    assert rep["inputs"] == 7 and rep["succeeded"] == 3 and rep["failed"] == 4
    assert sorted(Path(e["file"]).name for e in rep["errors"]) == sorted(BAD_PHOTOS)
    st = rep["stages"]  # where the time went, also said on stderr
    assert st["decode_s"] > 0 and st["infer_s"] > 0 and st["encode_s"] > 0
    assert st["infer_s"] + st["infer_wait_s"] + st["infer_blocked_s"] <= rep["seconds"]
    assert "busy seconds (summed over threads): decode" in r.stderr
    for name, (h, w) in (("photo_480x640", (480, 640)), ("photo_37x53", (37, 53))):
        mask = np.asarray(Image.open(out / f"{name}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(out / f"{name}_cutout.jpg").size == (w, h)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left"


@pytest.mark.parametrize("exact, refine", [(False, False), (True, False), (False, True)],
                         ids=["default", "exact", "refined"])
def test_masks_match_python_reference(fixtures: Path, tmp_path: Path, exact: bool,
                                      refine: bool) -> None:
    """Without refinement, by default (fused CPU kernels, oneDNN Graph fusion) the masks agree
    with the Python reference to IoU >= 0.999 and at most 1 pixel in 10,000; with --exact they
    are identical. With the manifest's refinement they agree with the reference's refined
    masks as closely."""
    from PIL import Image
    cases = json.loads((fixtures / "cases.json").read_text())
    inputs = [fixtures / f"{e['name']}.png" for e in cases["images"]]
    out = tmp_path / "out"
    r = run("infer", "--model", fixtures / "model", "--input", *inputs, "--output", out,
            "--cutout", "transparent", "--batch", str(len(inputs)),
            *(["--exact"] if exact else []), *([] if refine else ["--no-refine"]))
    assert r.returncode == 0, r.stderr
    for e in cases["images"]:
        ours = np.asarray(Image.open(out / f"{e['name']}_mask.png")) > 0
        suffix = "refined_mask" if refine else "ref_mask"
        raw = np.fromfile(fixtures / f"{e['name']}.{suffix}.u8", np.uint8)
        ref = raw.reshape(e["h"], e["w"]) > 0
        union = (ours | ref).sum()
        assert union == 0 or (ours & ref).sum() / union >= 0.999, e["name"]
        if exact:
            assert np.array_equal(ours, ref), e["name"]
        else:
            assert (ours != ref).sum() <= max(1, ref.size // 10_000), e["name"]
        cut = Image.open(out / f"{e['name']}_cutout.png")
        assert cut.mode == "RGBA" and cut.size == (e["w"], e["h"])
        alpha = np.asarray(cut)[..., 3]
        assert np.array_equal(alpha > (127 if refine else 0), ours)
        if refine:
            want = np.fromfile(fixtures / f"{e['name']}.alpha.u8", np.uint8).reshape(alpha.shape)
            assert np.abs(alpha.astype(int) - want.astype(int)).max() <= 1, e["name"]


def test_usage_errors_exit_2(fixtures: Path, photos: Path, tmp_path: Path) -> None:
    r = run("infer", "--model", tmp_path / "nowhere", "--input", photos, "--output", tmp_path / "o")
    assert r.returncode == 2 and "manifest.json" in r.stderr
    r = run("infer", "--model", fixtures / "model", "--input", photos)
    assert r.returncode == 2 and "--output is required" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("infer", "--model", fixtures / "model", "--input", photos, "--output", blocker / "o")
    assert r.returncode == 2 and "cannot create the output folder" in r.stderr
    r = run("infer", "--model", fixtures / "model", "--input", photos, "--output", tmp_path / "o",
            "--threshold", "2")
    assert r.returncode == 2 and "--threshold" in r.stderr
    r = run("infer", "--model", fixtures / "model", "--input", photos, "--output", tmp_path / "o",
            "--decode", "nvjpeg")
    assert r.returncode == 2 and '--decode: expected cpu or gpu, got "nvjpeg"' in r.stderr
    r = run("infer", "--model", fixtures / "model", "--input", photos, "--output", tmp_path / "d",
            "--decode", "gpu")
    assert r.returncode == 2 and "--decode gpu needs --device cuda" in r.stderr
    assert not (tmp_path / "d").exists()  # refused before any work
    assert run("infer", "--help").returncode == 0
    assert "--iters" in run("bench", "--help").stdout


def test_cuda_without_device_exit_2(fixtures: Path, photos: Path, tmp_path: Path) -> None:
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = run("infer", "--model", fixtures / "model", "--input", photos, "--output", tmp_path / "o",
            "--device", "cuda")
    assert r.returncode == 2
    assert "CUDA requested but not available" in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_cuda_fp16_folder_run_matches_the_cpu(fixtures: Path, photos: Path,
                                              tmp_path: Path) -> None:
    """On a GPU: fp16, channels_last and CUDA graphs give the CPU's masks (to fp16's IoU); the
    report says where it ran."""
    from PIL import Image

    for device, precision in (("cpu", "fp32"), ("cuda", "fp16")):
        r = run("infer", "--model", fixtures / "model", "--input", photos, "--output",
                tmp_path / device, "--device", device, "--precision", precision, "--report",
                tmp_path / f"{device}.json")
        assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "cuda.json").read_text())
    assert rep["device"].startswith("cuda") and rep["precision"] == "fp16"
    for p in photos.iterdir():
        a = np.asarray(Image.open(tmp_path / "cpu" / f"{p.stem}_mask.png")) > 0
        b = np.asarray(Image.open(tmp_path / "cuda" / f"{p.stem}_mask.png")) > 0
        assert (a & b).sum() / max(1, (a | b).sum()) >= 0.98, p.name
    # JPEGs decoded on the GPU (nvJPEG): about the masks of the CPU decoder's run. The decoders
    # differ by a level or two, which moves this barely trained model's masks (IoU 0.88-0.93
    # on the second GPU run, H200); ctest PipelineCuda.GpuDecodingMatchesCpuDecoding compares
    # the decoders' pixels, and the GPU check the trained model's masks.
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    for p in photos.iterdir():
        Image.open(p).convert("RGB").save(jpegs / f"{p.stem}.jpg", quality=92)
    for decode in ("cpu", "gpu"):
        r = run("infer", "--model", fixtures / "model", "--input", jpegs, "--output",
                tmp_path / f"jpeg_{decode}", "--device", "cuda", "--decode", decode, "--report",
                tmp_path / f"jpeg_{decode}.json")
        assert r.returncode == 0, r.stderr
        assert f"JPEG decoding on the {decode.upper()}" in r.stderr
    assert json.loads((tmp_path / "jpeg_gpu.json").read_text())["decode"] == "gpu"
    for p in jpegs.iterdir():
        a = np.asarray(Image.open(tmp_path / "jpeg_cpu" / f"{p.stem}_mask.png")) > 0
        b = np.asarray(Image.open(tmp_path / "jpeg_gpu" / f"{p.stem}_mask.png")) > 0
        assert (a & b).sum() / max(1, (a | b).sum()) >= 0.8, p.name
    r = run("bench", "--model", fixtures / "model", "--device", "cuda", "--precision", "fp16",
            "--batch", "1,4", "--iters", "5", "--json", tmp_path / "bench.json")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert {(x["batch"], x["cuda_graphs"]) for x in rows} == {(1, True), (1, False), (4, True),
                                                             (4, False)}


def test_bench_json(fixtures: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = run("bench", "--model", fixtures / "model", "--batch", "1,2", "--iters", "3",
            "--warmup", "1", "--json", out, "--input", photos)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert [row["batch"] for row in rep["results"]] == [1, 2]
    assert all(row["p50_ms"] > 0 for row in rep["results"])
    assert rep["end_to_end"]["images"] == 3
    assert rep["threads"] == 2  # OMP_NUM_THREADS (tests/conftest.py) is the default
    assert all(row["threads"] == 2 for row in rep["results"])


def test_bench_sweeps_threads(fixtures: Path, tmp_path: Path) -> None:
    """--threads 1,2: a row per thread count and batch, each timed at its own count."""
    out = tmp_path / "bench.json"
    r = run("bench", "--model", fixtures / "model", "--batch", "1,2", "--iters", "2",
            "--warmup", "1", "--threads", "1,2", "--json", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["threads"] == [1, 2]
    assert [(row["threads"], row["batch"]) for row in rep["results"]] == [
        (1, 1), (1, 2), (2, 1), (2, 2)]
    assert r.stdout.count("carseg_infer bench: backend") == 2
    assert ", 1 threads," in r.stdout and ", 2 threads," in r.stdout
    bad = run("bench", "--model", fixtures / "model", "--threads", "0")
    assert bad.returncode == 2 and "--threads" in bad.stderr
    bad = run("infer", "--model", fixtures / "model", "--input", tmp_path, "--output",
              tmp_path / "o", "--threads", "1,2")
    assert bad.returncode == 2 and "--threads takes one number" in bad.stderr


def _three_photos(tiny_data: Path, tmp_path: Path) -> Path:
    photos = tmp_path / "in"
    photos.mkdir()
    for p in sorted((tiny_data / "train").glob("*.jpg"))[:3]:
        shutil.copy(p, photos / p.name)
    return photos


def _folder_masks(model: Path, photos: Path, out: Path, *flags: str | Path
                  ) -> tuple[dict[str, np.ndarray], str, dict]:
    """carseg_infer infer over `photos` (masks only) -> (masks by file name, its stderr, its
    report); skips where this build has no ONNX Runtime."""
    from PIL import Image

    report = out.with_suffix(".json")
    r = run("infer", "--model", model, "--input", photos, "--output", out, "--cutout", "none",
            "--report", report, *flags)
    if r.returncode == 2 and "built without ONNX Runtime's headers" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr
    masks = {p.name: np.asarray(Image.open(p)) > 0 for p in out.glob("*_mask.png")}
    return masks, r.stderr, json.loads(report.read_text())


def _assert_agree(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                  min_iou: float) -> None:
    assert got.keys() == want.keys() and len(got) == 3
    for name, a in got.items():
        b = want[name]
        assert (a & b).sum() / max(1, (a | b).sum()) >= min_iou, name


@pytest.mark.parametrize("backend", ["aoti", "onnx"])
def test_other_backends_match_torchscript(tiny_artifacts_all: Path, tiny_data: Path,
                                          tmp_path: Path, backend: str) -> None:
    """carseg_infer --backend aoti (conftest's model.pt2) and --backend onnx (ONNX Runtime on
    model.onnx) against --backend torchscript, end to end over a folder."""
    photos = _three_photos(tiny_data, tmp_path)
    masks = {}
    for b in (backend, "torchscript"):
        masks[b], stderr, report = _folder_masks(tiny_artifacts_all, photos, tmp_path / b,
                                                 "--backend", b)
        assert report["backend"] == b
        assert f"carseg_infer: cpu fp32 {b}, " in stderr  # what it says it runs on
    _assert_agree(masks[backend], masks["torchscript"], 0.999)


def test_same_stem_is_refused_and_unwritable_report_fails_early(fixtures: Path, photos: Path,
                                                                tmp_path: Path) -> None:
    from PIL import Image

    Image.open(photos / "photo_37x53.png").convert("RGB").save(photos / "photo_37x53.jpg")
    out, report = tmp_path / "out", tmp_path / "r.json"
    r = run("infer", "--model", fixtures / "model", "--input", photos, "--output", out,
            "--report", report)
    assert r.returncode == 1
    assert f"{photos / 'photo_37x53.png'}: same name as {photos / 'photo_37x53.jpg'}" in r.stderr
    assert len(list(out.glob("photo_37x53_mask.png"))) == 1
    rep = json.loads(report.read_text())
    assert rep["succeeded"] == 3 and rep["failed"] == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("infer", "--model", fixtures / "model", "--input", photos, "--output",
            tmp_path / "out2", "--report", blocker / "r.json")
    assert r.returncode == 2 and "cannot create the output folder" in r.stderr
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_int8_folder_run(tiny_int8: Path, tiny_data: Path, tmp_path: Path) -> None:
    """carseg_infer infer --precision int8: says so, reports it, and its masks keep IoU >= 0.98
    against the fp32 run's."""
    photos = _three_photos(tiny_data, tmp_path)
    masks = {}
    for precision in ("int8", "fp32"):
        masks[precision], stderr, report = _folder_masks(
            tiny_int8, photos, tmp_path / precision, "--precision", precision)
        assert f"carseg_infer: cpu {precision} onnx, " in stderr
        assert report["precision"] == precision
    _assert_agree(masks["int8"], masks["fp32"], 0.98)


def test_auto_precision_runs_the_verified_int8_model(tiny_int8: Path, tiny_data: Path,
                                                     tmp_path: Path) -> None:
    """With no --precision (auto) carseg_infer runs the folder's int8 model where verify passed
    it, and says so; the same folder whose int8 entry is not marked passed runs fp32, and so
    does --backend torchscript."""
    photos = _three_photos(tiny_data, tmp_path)
    masks, stderr, report = _folder_masks(tiny_int8, photos, tmp_path / "auto")
    assert "carseg_infer: cpu int8 onnx, " in stderr
    assert report["precision"] == "int8"
    unverified = tmp_path / "unverified"
    shutil.copytree(tiny_int8, unverified)
    manifest = json.loads((unverified / "manifest.json").read_text())
    manifest["artifacts"]["onnx_int8"]["parity"]["passed"] = False
    (unverified / "manifest.json").write_text(json.dumps(manifest))
    fp32, stderr, report = _folder_masks(unverified, photos, tmp_path / "unverified_out")
    assert "carseg_infer: cpu fp32 onnx, " in stderr and report["precision"] == "fp32"
    _, stderr, report = _folder_masks(tiny_int8, photos, tmp_path / "ts", "--backend",
                                      "torchscript")
    assert "carseg_infer: cpu fp32 torchscript, " in stderr and report["precision"] == "fp32"
    _assert_agree(masks, fp32, 0.98)
    # A verified int8 model that no longer loads (its file damaged): auto says why and runs
    # fp32; --precision int8 refuses the folder.
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_int8, damaged)
    (damaged / "model.int8.onnx").write_bytes(b"not a model")
    _, stderr, report = _folder_masks(damaged, photos, tmp_path / "damaged_out")
    assert "sha256 mismatch" in stderr and "precision auto runs fp32 instead" in stderr
    assert "carseg_infer: cpu fp32 onnx, " in stderr and report["precision"] == "fp32"
    r = run("infer", "--model", damaged, "--input", photos, "--output", tmp_path / "refused",
            "--precision", "int8")
    assert r.returncode == 2 and "sha256 mismatch" in r.stderr
