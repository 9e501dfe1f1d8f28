"""What several test folders share: bad-input files named for their defect, artifact folders
exported once a session, and parity helpers.

No tests here: pytest keeps a session fixture per module that defines it, so the folders are
cached under the session's base temp folder instead, and each module's fixture calls these.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_YML = REPO / "python" / "carseg" / "configs" / "train.yml"


def config_refine_spec() -> Any:
    """The RefineSpec that export records for a run of TRAIN_YML (its shared.refine)."""
    import yaml

    from carseg.runtime.refine import RefineSpec

    return RefineSpec(**yaml.safe_load(TRAIN_YML.read_text())["shared"]["refine"])

# Files no entry point may choke on, each named for its defect, and the words its error must
# contain (Python's reader says "not a readable image", libcarseg's "not an image").
BAD_PHOTOS = {
    "empty.png": "empty file",
    "text_as_image.jpg": "not a",
    "truncated_jpeg.jpg": "corrupt or truncated",
    "truncated_png.png": "corrupt or truncated",
}
# Unusual but valid photos: every entry point reads them as RGB.
ODD_PHOTOS = ("grayscale.png", "deep16.png", "rgba.png")


def native_built() -> bool:
    """Whether the C++ module carseg._native imports here."""
    try:
        import carseg._native  # noqa: F401
    except ImportError:
        return False
    return True


def carseg_infer() -> Path | None:
    """The carseg_infer binary: $CARSEG_INFER, beside this interpreter, in the build folder,
    or on PATH."""
    for p in (os.environ.get("CARSEG_INFER"), Path(sys.prefix) / "bin" / "carseg_infer",
              REPO / "build" / "py" / "cpp" / "carseg_infer", shutil.which("carseg_infer")):
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return Path(p)
    return None


def jpeg_with_scans(good_jpeg: bytes, scans: int) -> bytes:
    """A JPEG whose one scan is repeated `scans` times: what a decoder would have to make
    `scans` passes over."""
    sos = good_jpeg.index(b"\xff\xda")
    scan = good_jpeg[sos:-2]  # up to the end-of-image marker
    return good_jpeg[:sos] + scan * scans + b"\xff\xd9"


def copy_photos(data: Path, folder: Path, n: int) -> Path:
    """`folder` (created) holding copies of the first `n` photos of a synthetic data set."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted((data / "train").glob("*.jpg"))[:n]:
        shutil.copy(p, folder / p.name)
    return folder


def write_bad_photos(folder: Path, good_jpeg: Path) -> dict[str, str]:
    """BAD_PHOTOS in `folder`, the truncated ones cut from `good_jpeg` (and its PNG)."""
    from PIL import Image

    jpeg = good_jpeg.read_bytes()
    (folder / "empty.png").write_bytes(b"")
    (folder / "text_as_image.jpg").write_text("this is not an image\n")
    (folder / "truncated_jpeg.jpg").write_bytes(jpeg[:400])
    png = folder / "truncated_png.png"
    Image.open(good_jpeg).save(png)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    return dict(BAD_PHOTOS)


def write_odd_photos(folder: Path, size: tuple[int, int] = (40, 60)) -> list[Path]:
    """ODD_PHOTOS in `folder`: 8-bit grayscale, 16-bit grayscale, RGBA with a transparent hole."""
    from PIL import Image

    h, w = size
    gray = np.zeros((h, w), np.uint8)
    gray[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 200
    Image.fromarray(gray).save(folder / "grayscale.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "deep16.png")
    rgba = np.dstack([np.repeat(gray[..., None], 3, axis=2), np.full((h, w), 255, np.uint8)])
    rgba[: h // 4, : w // 4, 3] = 0
    Image.fromarray(rgba).save(folder / "rgba.png")
    return [folder / n for n in ODD_PHOTOS]
FP32_ATOL, FP32_IOU = 1e-4, 0.999
BATCHES = (1, 4)
SIZES = ((64, 64), (32, 96))  # the tiny run's image size, and another multiple of 32


def exported(tmp_path_factory: pytest.TempPathFactory, logdir: Path, name: str,
             formats: tuple[str, ...], **kwargs) -> Path:
    """basetemp/<name>, holding `formats` exported from `logdir` (exported on first use)."""
    from export.api import export_artifact

    out = tmp_path_factory.getbasetemp() / name
    done = out / ".complete"
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        for fmt in formats:
            export_artifact(fmt, logdir, out, **kwargs)
        done.write_text("\n".join(formats))
    return out


def copy_of(folder: Path, dest: Path) -> Path:
    """A private copy of an artifact folder, for tests that change it."""
    target = dest / folder.name
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(".complete"))
    return target


def manifest_variant(folder: Path, dest: Path) -> Path:
    """`folder` at `dest` for a test that changes only its manifest.json: the manifest is copied,
    the model files are hard links (a copy where links can't be made), so eight hostile
    manifests cost kilobytes, not eight copies of the models. Never write to the models there."""
    def link_or_copy(src: str, dst: str) -> None:
        if Path(src).name == "manifest.json":
            shutil.copy2(src, dst)
            return
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(folder, dest, copy_function=link_or_copy,
                    ignore=shutil.ignore_patterns(".complete"))
    return dest


def eager_model(logdir: Path):
    from export.source import build_eager, load_source

    return build_eager(load_source(logdir, "best"))


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {f"b{b}_{h}x{w}": torch.randn(b, 3, h, w, generator=g)
            for h, w in SIZES for b in BATCHES}


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


# Runs in a fresh interpreter with nothing of carseg imported: only the consumer's loaders.
FRESH_SCRIPT = r"""
import sys, numpy as np
backend, path, npz_in, npz_out = sys.argv[1:5]
xs = dict(np.load(npz_in))
out = {}
if backend == "torchscript":
    import torch
    m = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        out = {k: m(torch.from_numpy(v)).numpy() for k, v in xs.items()}
elif backend == "onnx":
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["input"], s.get_inputs()
    assert [o.name for o in s.get_outputs()] == ["logits"], s.get_outputs()
    out = {k: s.run(["logits"], {"input": v})[0] for k, v in xs.items()}
elif backend == "aoti":
    import torch
    r = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        out = {k: r(torch.from_numpy(v)).numpy() for k, v in xs.items()}
assert "carseg" not in sys.modules and "export" not in sys.modules
np.savez(npz_out, **out)
"""


def check_fresh_process_parity(backend: str, artifact: Path, logdir: Path,
                               tmp_path: Path) -> dict[str, float]:
    """Load `artifact` in a new interpreter, run batch 1 and 4 at two sizes, compare to eager."""
    xs = inputs()
    np.savez(tmp_path / "in.npz", **{k: v.numpy() for k, v in xs.items()})
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_SCRIPT, backend, str(artifact), str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300,
        cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(np.load(tmp_path / "out.npz"))
    model = eager_model(logdir)
    worst = {}
    assert sorted(got) == sorted(xs)
    for k, x in xs.items():
        with torch.no_grad():
            ref = model(x)
        y = torch.from_numpy(got[k])
        assert y.shape == ref.shape == (x.shape[0], 1, *x.shape[2:]), k
        diff = (y - ref).abs().max().item()
        assert not math.isnan(diff), k
        assert diff <= FP32_ATOL, f"{backend} {k}: max |diff| {diff:.2e} > {FP32_ATOL}"
        m_iou = iou(y > 0, ref > 0)
        assert m_iou >= FP32_IOU, f"{backend} {k}: mask IoU {m_iou:.5f}"
        worst[k] = diff
    return worst


def manifest_json(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def quiet_in_process(config: dict) -> dict:
    """A config's train step made quiet, its loaders without worker processes (faster to start
    in tests); returns the step."""
    step = config["run"][0]
    step["verbose"] = False
    for loader in step["loaders"].values():
        loader["num_workers"] = 0
        loader.pop("persistent_workers", None)
    return step


def tiny_run_config(data: Path, logdir: Path) -> dict:
    """The demo config cut down for tests: 1 epoch at 64 px, no loader workers, no random
    augmentation (so that with the seeded initial weights the run is the same every time), and
    BCE + Dice."""
    from carseg.train.run import prepare_config

    config = prepare_config([TRAIN_YML], logdir=logdir, data=data, epochs=1, image_size=64)
    step = quiet_in_process(config)
    step["loaders"]["train"]["dataset"]["transforms"]["stage"] = "valid"
    # After one epoch a model trained on BCE alone (the demo's loss) is unsure of most pixels,
    # and int8 flips the unsure ones; a Dice term makes it decisive, as a trained model is.
    step["criterion"]["bce_weight"] = 0.3
    return config


# ---- an oracle model: a known answer, for tests of what is done with a good mask ----------

class _SaturationOracle(torch.nn.Module):
    """Logits from colour saturation: the oracle photos' car is saturated blue on a grey
    studio, so this 'model' is confident far from the edge and unsure on it, as a good model
    seen at a small input size."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * self.std + self.mean
        sat = rgb.amax(1, keepdim=True) - rgb.amin(1, keepdim=True)
        return 30 * (sat - 0.25)


def oracle_artifacts(base: Path, dest: Path) -> Path:
    """An artifact folder like `base` (its manifest, refinement included) whose TorchScript
    model is the saturation oracle."""
    from carseg.runtime.preprocess import PreprocessSpec

    manifest = json.loads((base / "manifest.json").read_text())
    spec = PreprocessSpec.from_json(manifest["preprocessing"])
    dest.mkdir(parents=True)
    model = _SaturationOracle(spec.mean, spec.std).eval()
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(model, torch.zeros(1, 3, spec.size, spec.size)))
    path = dest / "model.torchscript.pt"
    frozen.save(str(path))
    data = path.read_bytes()
    entry = dict(manifest["artifacts"]["torchscript"], file=path.name, parity=None,
                 sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest["artifacts"] = {"torchscript": entry}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def oracle_photo(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(photo, true mask): a blue ellipse (the car), its edge blended over about 2 pixels, on a
    grey studio with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    rr = ((yy - h * 0.55) / (h * 0.3)) ** 2 + ((xx - w * 0.5) / (w * 0.33)) ** 2
    cover = np.clip((1 - rr) * 12 + 0.5, 0, 1)[..., None]
    rgb = cover * [40, 70, 200] + (1 - cover) * [205, 205, 200] + rng.normal(0, 3, (h, w, 3))
    return np.clip(rgb, 0, 255).round().astype(np.uint8), rr <= 1
