"""carseg cutout: full-resolution masks and cutouts, every backend alike, bad files reported."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    carseg_infer,
    copy_photos,
    native_built,
    oracle_artifacts,
    oracle_photo,
    write_bad_photos,
    write_odd_photos,
)
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
                     str(out), "--backend", backend, "--matte"]) == 0
        results[backend] = _masks(out)
        assert len(results[backend]) == 4
        for photo in photos.iterdir():
            rgb = read_rgb(photo)
            mask = results[backend][f"{photo.stem}_mask.png"]
            assert mask.shape == rgb.shape[:2]  # the photo's own resolution
            cut = read_rgb(out / f"{photo.stem}_cutout.jpg")
            assert cut.shape == rgb.shape
            # where the matte is 0 the background is white (JPEG: within a few levels); where
            # it is soft (the mask may be 0 there too) the edge is blended
            bg = np.asarray(Image.open(out / f"{photo.stem}_alpha.png")) == 0
            if bg.any():
                assert np.median(cut[bg]) >= 250
    ref = results["torchscript"]
    for backend, masks in results.items():
        for name, m in masks.items():
            r = ref[name].astype(bool)
            iou = (r & m.astype(bool)).sum() / max(1, (r | m.astype(bool)).sum())
            assert iou >= 0.999, (backend, name, iou)


@pytest.mark.parametrize("backend", PIPELINES)
def test_transparent_cutout_has_the_matte_as_alpha(photos: Path, tiny_artifacts: Path,
                                                   tmp_path: Path, backend: str) -> None:
    """The alpha of a transparent cutout is the refinement's matte (NAME_alpha.png, the
    reference's predict_matte): above half exactly where the mask is set, and where it is 255
    the photo's own pixels."""
    from carseg.runtime.reference import ReferencePredictor

    ref = ReferencePredictor(tiny_artifacts)
    out = tmp_path / "out"
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output", str(out),
                 "--background", "transparent", "--matte", "--backend", backend]) == 0
    for photo in photos.iterdir():
        rgba = np.asarray(Image.open(out / f"{photo.stem}_cutout.png"))
        mask = read_mask(out / f"{photo.stem}_mask.png")
        alpha = np.asarray(Image.open(out / f"{photo.stem}_alpha.png"))
        assert rgba.shape == (*mask.shape, 4)
        assert np.array_equal(rgba[..., 3], alpha)
        assert np.array_equal(alpha > 127, mask > 0)
        want = ref.predict_matte(read_rgb(photo))[1].astype(int)
        assert np.abs(alpha.astype(int) - want).max() <= 1
        inside = alpha == 255
        assert inside.any() and np.array_equal(rgba[..., :3][inside], read_rgb(photo)[inside])


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


# ---- the output options -------------------------------------------------------------------
# On the saturation oracle (helpers.oracle_artifacts): a model confident away from the car's
# edge, so that "far outside" and "far inside" mean something.

@pytest.fixture(scope="module")
def oracle(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return oracle_artifacts(tiny_artifacts, tmp_path_factory.mktemp("oracle") / "art")


@pytest.fixture()
def oracle_photos(tmp_path: Path) -> Path:
    folder = tmp_path / "oracle_photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(160, 240), (120, 200), (97, 151)]):
        Image.fromarray(oracle_photo(h, w, i)[0]).save(folder / f"car{i}.png")
    return folder


def _far(mask: np.ndarray, inside: bool, reach: int = 6) -> np.ndarray:
    from scipy import ndimage

    square = np.ones((3, 3), bool)
    m = mask.astype(bool)
    return (ndimage.binary_erosion(m, square, iterations=reach) if inside
            else ~ndimage.binary_dilation(m, square, iterations=reach))


@pytest.mark.parametrize("backend", PIPELINES)
def test_a_colour_background_a_crop_and_the_matte(oracle_photos: Path, oracle: Path,
                                                  tmp_path: Path, backend: str) -> None:
    """--background '#RRGGBB' is that colour outside the car; --crop holds the whole car (every
    pixel the matte keeps) and the margin; the matte is 0 far outside the car, 255 far
    inside."""
    from carseg.io.encode import crop_box

    out = tmp_path / "out"
    assert main(["cutout", str(oracle_photos), "--model", str(oracle), "--output", str(out),
                 "--background", "#2060c0", "--crop", "6", "--matte", "--quality", "100",
                 "--backend", backend]) == 0
    for photo in oracle_photos.iterdir():
        rgb = read_rgb(photo)
        mask = read_mask(out / f"{photo.stem}_mask.png")
        alpha = np.asarray(Image.open(out / f"{photo.stem}_alpha.png"))
        assert mask.shape == alpha.shape == rgb.shape[:2]  # masks and mattes are not cropped
        assert mask.any() and (~mask.astype(bool)).any()
        assert (alpha[_far(mask, False)] == 0).all() and (alpha[_far(mask, True)] == 255).all()
        x0, y0, x1, y1 = crop_box(alpha, 6)
        ys, xs = np.nonzero(alpha)
        assert x0 == max(0, xs.min() - 6) and x1 == min(rgb.shape[1], xs.max() + 7)
        assert y0 == max(0, ys.min() - 6) and y1 == min(rgb.shape[0], ys.max() + 7)
        cut = read_rgb(out / f"{photo.stem}_cutout.jpg").astype(int)
        assert cut.shape == (y1 - y0, x1 - x0, 3)
        outside = (alpha == 0)[y0:y1, x0:x1]
        assert outside.any()
        assert np.abs(cut[outside] - [0x20, 0x60, 0xc0]).mean() < 3  # JPEG q100
        inside = (alpha == 255)[y0:y1, x0:x1]
        assert np.abs(cut[inside] - rgb[y0:y1, x0:x1][inside]).mean() < 3


def test_an_image_background_and_masks_only(oracle_photos: Path, oracle: Path,
                                            tmp_path: Path) -> None:
    """An image behind the car is resized to each photo: outside the car the cutout is that
    image; --mask-only writes masks alone."""
    from carseg.io.encode import Backdrop

    back = np.zeros((30, 50, 3), np.uint8)
    back[:, :25] = (250, 200, 0)
    back[:, 25:] = (0, 120, 240)
    Image.fromarray(back).save(tmp_path / "studio.png")
    out = tmp_path / "out"
    assert main(["cutout", str(oracle_photos), "--model", str(oracle), "--output", str(out),
                 "--background", str(tmp_path / "studio.png"), "--quality", "100",
                 "--matte"]) == 0
    bd = Backdrop.parse(str(tmp_path / "studio.png"))
    for photo in oracle_photos.iterdir():
        rgb = read_rgb(photo)
        alpha = np.asarray(Image.open(out / f"{photo.stem}_alpha.png"))
        want = bd.pixels(*rgb.shape[:2]).astype(int)
        cut = read_rgb(out / f"{photo.stem}_cutout.jpg").astype(int)
        outside = alpha == 0
        assert outside.any() and np.abs(cut[outside] - want[outside]).mean() < 4
    masks_only = tmp_path / "masks"
    assert main(["cutout", str(oracle_photos), "--model", str(oracle), "--output",
                 str(masks_only), "--mask-only"]) == 0
    assert sorted(p.name for p in masks_only.iterdir()) == sorted(
        f"{p.stem}_mask.png" for p in oracle_photos.iterdir())


def test_refinement_puts_the_edge_back_and_decontaminates(oracle_photos: Path, oracle: Path,
                                                          tmp_path: Path) -> None:
    """On the oracle (whose 64 px view blurs the edge over several photo pixels), the refined
    mask is closer to the true one than the unrefined, and the soft edge over green holds no
    grey of the studio: under half the error of blending the photo's own pixel (measured: a
    third, 7.0 against 21.5 grey levels)."""
    from carseg.runtime.reference import ReferencePredictor

    on, off = ReferencePredictor(oracle), ReferencePredictor(oracle, refine=False)
    for i, (h, w) in enumerate([(320, 480), (240, 400)]):
        rgb, truth = oracle_photo(h, w, 10 + i)
        wrong_on = int((on.predict(rgb).astype(bool) != truth).sum())
        wrong_off = int((off.predict(rgb).astype(bool) != truth).sum())
        assert wrong_on < wrong_off, (wrong_on, wrong_off)
        r = on.render(rgb, "#00ff00")
        a = r["alpha"].astype(float)[..., None] / 255
        soft = (r["alpha"] > 0) & (r["alpha"] < 255)
        ideal = a * [40, 70, 200] + (1 - a) * [0, 255, 0]
        naive = a * rgb + (1 - a) * [0, 255, 0]
        err = np.abs(r["cutout"] - ideal)[soft].mean()
        assert soft.any() and err < 0.5 * np.abs(naive - ideal)[soft].mean(), err


def test_one_photo_through_stdin_and_stdout(photos: Path, tiny_artifacts: Path) -> None:
    """`carseg cutout - --output -` pipes: the bytes out are the cutout (or, with --matte, the
    alpha matte; with --mask-only, the mask) of the photo in."""
    import io
    import sys

    from carseg.runtime.reference import ReferencePredictor

    photo = next(photos.glob("*.jpg"))
    cli = [sys.executable, "-m", "carseg.cli", "cutout", "-", "--model", str(tiny_artifacts),
           "--output", "-"]
    ref = ReferencePredictor(tiny_artifacts)
    want = ref.render(read_rgb(photo), "transparent")
    r = subprocess.run(cli + ["--background", "transparent"], input=photo.read_bytes(),
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.stdout))), want["cutout"])
    r = subprocess.run(cli + ["--matte"], input=photo.read_bytes(), capture_output=True,
                       timeout=300)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.stdout))), want["alpha"])
    r = subprocess.run(cli + ["--mask-only"], input=photo.read_bytes(), capture_output=True,
                       timeout=300)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.stdout))) > 0, want["mask"] > 0)
    r = subprocess.run(cli, input=b"not a photo", capture_output=True, timeout=300)
    assert r.returncode == 2 and b"<stdin>: not a readable image" in r.stderr and not r.stdout


@pytest.mark.parametrize("args, words", [
    (["--background", "blue"], "--background: expected white, transparent, #RRGGBB or an "
                               "image file, got 'blue' (no such file)"),
    (["--background", "#12"], "--background: expected a colour as #RRGGBB"),
    (["--crop", "-3"], "--crop: expected a margin >= 0 pixels, got -3"),
    (["--quality", "0"], "--quality: expected 1 to 100, got 0"),
    (["--softness", "2"], "softness: expected a number in (0, 1], got 2"),
    (["--decode", "gpu"], "--decode gpu decodes JPEGs with nvJPEG for the C++ pipeline on a "
                          "GPU: use it with --backend native --device cuda (got --backend "
                          "torchscript --device cpu)"),
    (["--decode", "gpu", "--backend", "native"], "(got --backend native --device cpu)"),
])
def test_bad_output_options_are_named(photos: Path, tiny_artifacts: Path, tmp_path: Path,
                                      capsys, args: list[str], words: str) -> None:
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output",
                 str(tmp_path / "o"), *args]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_no_refine_gives_the_models_mask(photos: Path, tiny_artifacts: Path,
                                         tmp_path: Path) -> None:
    from carseg.runtime.reference import ReferencePredictor

    out = tmp_path / "out"
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output", str(out),
                 "--no-refine"]) == 0
    plain = ReferencePredictor(tiny_artifacts, refine=False)
    for photo in photos.iterdir():
        assert np.array_equal(read_mask(out / f"{photo.stem}_mask.png"),
                              plain.predict(read_rgb(photo)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_jpegs_decoded_on_the_gpu(photos: Path, tiny_artifacts: Path, tmp_path: Path,
                                  caplog) -> None:
    """carseg cutout --backend native --device cuda --decode gpu: nvJPEG's photos through the
    C++ pipeline, every photo written, and the first line says where JPEGs are decoded."""
    pytest.importorskip("carseg._native")
    caplog.set_level("INFO")
    out = tmp_path / "o"
    assert main(["cutout", str(photos), "--model", str(tiny_artifacts), "--output", str(out),
                 "--backend", "native", "--device", "cuda", "--decode", "gpu"]) == 0
    assert "JPEG decoding on the GPU" in caplog.text
    jpgs = sorted(photos.glob("*.jpg"))
    assert jpgs and all((out / f"{p.stem}_mask.png").is_file() for p in jpgs)
    assert all((out / f"{p.stem}_cutout.jpg").is_file() for p in jpgs)
