"""Prove each artifact computes what the trained model computes.

For every artifact in a folder: its sha256 still matches the manifest; then, on fresh random
inputs and on real photos (through carseg.runtime.preprocess), at batch 1 and a larger batch and at
the manifest's size and another multiple of 32 (for an artifact that is spatially dynamic),
its logits are compared with eager PyTorch rebuilt from the logdir: max |diff| of logits and
IoU of the thresholded masks. The result goes into the manifest's `parity` fields.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from carseg.errors import CarsegError
from carseg.io.images import read_rgb
from carseg.runtime.preprocess import PreprocessSpec, preprocess_batch
from carseg.runtime.reference import load_backend
from export.formats import no_tf32, onnx_run_device
from export.manifest import (
    ARTIFACT_NAMES,
    MANIFEST_NAME,
    Manifest,
    load_manifest,
    sha256_file,
    utc_now,
    with_parity,
    write_manifest,
)
from export.source import Source, build_eager, load_source

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_BATCHES = (1, 4)
MAX_IMAGES = 4


# fp32 arithmetic in another order differs by rounding relative to the size of what is summed:
# a trained model's logits reach hundreds (seen: 400 on random inputs after 2 epochs at 256 px,
# where the artifacts were 8.5e-4 apart, 2e-6 of the scale). So each case's max |diff| is
# compared with the tolerance times that case's logit scale, max(1, max |logit|).
SCALE = "max(1, max |eager logit|) of the case"


@dataclass(frozen=True)
class Tolerance:
    max_abs_diff: float | None  # per unit of SCALE; None: not checked (fp16: masks must hold)
    mask_iou: float

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "max_abs_diff_relative_to": SCALE,
                "mask_iou": self.mask_iou}


def diffs_within(cases: list[dict[str, Any]], tolerance: Tolerance) -> bool:
    """Whether every case's max |diff| is within the tolerance times its logit scale."""
    if tolerance.max_abs_diff is None:
        return True
    return all(c["max_abs_diff"] <= tolerance.max_abs_diff * c["logit_scale"] for c in cases)


# int8: mask IoU against eager fp32 on real photos only (its logits move by the quantization
# step; random tensors are not what it was calibrated for).
DEFAULT_TOLERANCES = {"fp32": Tolerance(1e-4, 0.999), "fp16": Tolerance(None, 0.995),
                      "int8": Tolerance(None, 0.99)}


@dataclass(frozen=True)
class Case:
    label: str  # "random" or "images"
    batch: int
    hw: tuple[int, int]
    x: torch.Tensor  # float32 [N,3,H,W], CPU
    ref: torch.Tensor  # eager float32 logits, CPU


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def find_images(images: str | Path | None, source: Source) -> list[Path]:
    """Photos to check on: a CSV (column `image`), a folder, or the run's valid CSV."""
    if images is None:
        csv_path = _valid_csv(source)
        if csv_path is None or not csv_path.is_file():
            log.warning("no --images and no valid CSV in %s: checking random inputs only",
                        source.config_path)
            return []
        images = csv_path
    return find_images_in(Path(images), MAX_IMAGES)


def find_images_in(images: Path, most: int) -> list[Path]:
    """The first `most` photos of a CSV (column `image`, paths relative to the CSV) or of a
    folder (sorted by name)."""
    if images.is_dir():
        found = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"{images}: no images ({sorted(IMAGE_SUFFIXES)}) in folder")
        return found[:most]
    if not images.is_file():
        raise FileNotFoundError(f"{images}: no such CSV or folder of photos")
    with images.open(newline="") as f:
        reader = csv.DictReader(f)
        if "image" not in (reader.fieldnames or []):
            raise ValueError(f"{images}: expected a column `image`, got {reader.fieldnames}")
        rows = [r["image"] for r, _ in zip(reader, range(most), strict=False)]
    if not rows:
        raise ValueError(f"{images}: no rows")
    return [p if p.is_absolute() else images.parent / p for p in map(Path, rows)]


def _valid_csv(source: Source) -> Path | None:
    try:
        config = yaml.safe_load(source.config_path.read_text())
        from carseg.train.config import train_step

        path = train_step(config)["loaders"]["valid"]["dataset"]["csv_path"]
        return Path(path)
    except (KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def _second_hw(size: int) -> tuple[int, int]:
    """Another, non-square resolution: both sides multiples of 32, neither the export size."""
    return (size - 32 if size >= 64 else size + 64, size + 32)


def build_cases(eager: torch.nn.Module, spec: PreprocessSpec, photos: list[torch.Tensor],
                batches: tuple[int, ...], seed: int = 0) -> list[Case]:
    """Inputs and eager logits, shared by every artifact (all on CPU, float32)."""
    g = torch.Generator().manual_seed(seed)
    cases: list[Case] = []
    dev = next(eager.parameters()).device
    sizes = [(spec.size, spec.size), _second_hw(spec.size)]

    def add(label: str, x: torch.Tensor) -> None:
        with torch.no_grad():
            ref = eager(x.to(dev)).float().cpu()
        cases.append(Case(label, int(x.shape[0]), (int(x.shape[2]), int(x.shape[3])), x, ref))

    for hw in sizes:
        for b in batches:
            add("random", torch.randn(b, 3, *hw, generator=g))
    if photos:
        for s in (spec.size, spec.size + 32):
            sp = dataclasses.replace(spec, size=s)
            for b in sorted({min(b, len(photos)) for b in batches}):
                add("images", preprocess_batch(photos[:b], sp))
    return cases


@contextlib.contextmanager
def exact_fp32(device: torch.device, precision: str) -> Iterator[None]:
    """fp32 on CUDA without TF32 while verifying. cuDNN convolutions use TF32 by default
    (torch and libtorch alike): on the first GPU run (H200) it moved the TorchScript
    artifact's logits 6.9e-3 from eager fp32 on the CPU, 20x fp32's tolerance, with the same
    masks (IoU 0.99996). Verify proves the artifact computes the trained model's function;
    TF32 is a choice of the runtime, made the same way for every artifact."""
    if device.type != "cuda" or precision != "fp32":
        yield
        return
    with no_tf32():
        yield


def _check_case(run: Any, c: Case, dev: torch.device, dtype: torch.dtype, size: int,
                spatial: bool, entry: dict[str, Any], logit_thr: float,
                rows: list[dict[str, Any]]) -> None:
    """Runs one case and appends its row (or nothing, for a shape the artifact does not take)."""
    if not spatial and c.hw != (size, size):
        return
    if not entry["dynamic"]["batch"] and c.batch != 1:
        return
    try:
        y = run(c.x.to(device=dev, dtype=dtype)).float().cpu()
    except Exception as e:  # a backend error on one shape is a failed case, not a crash
        rows.append({"input": c.label, "batch": c.batch, "hw": list(c.hw),
                     "max_abs_diff": None, "mask_iou": None,
                     "error": str(e).strip().splitlines()[0] if str(e).strip() else
                     type(e).__name__})
        return
    if y.shape != c.ref.shape:
        rows.append({"input": c.label, "batch": c.batch, "hw": list(c.hw),
                     "max_abs_diff": None, "mask_iou": None,
                     "error": f"expected logits {list(c.ref.shape)}, got {list(y.shape)}"})
        return
    diff = (y - c.ref).abs().max().item()
    scale = max(1.0, c.ref.abs().max().item())
    iou = _iou(y > logit_thr, c.ref > logit_thr)
    rows.append({"input": c.label, "batch": c.batch, "hw": list(c.hw),
                 "max_abs_diff": diff, "logit_scale": scale, "mask_iou": iou})


def check_artifact(folder: Path, name: str, entry: dict[str, Any], manifest: Manifest,
                   cases: list[Case], tolerance: Tolerance) -> dict[str, Any]:
    """One artifact against the eager cases -> a result with `passed` and, if run, parity."""
    path = folder / entry["file"]
    result: dict[str, Any] = {"artifact": name, "file": entry["file"],
                              "precision": entry["precision"], "device": entry["device"],
                              "passed": False, "error": None, "parity": None}
    if not path.is_file():
        result["error"] = f"{path}: file named in the manifest is missing"
        return result
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        result["error"] = (f"{path}: sha256 mismatch: manifest expects {entry['sha256']}, "
                           f"file has {actual}")
        return result
    if entry["device"] == "cuda" and entry["format"] != "onnx" and not torch.cuda.is_available():
        result["error"] = f"{path}: exported for cuda; no CUDA device here"
        return result
    dev = torch.device(entry["device"])
    if entry["format"] == "onnx":
        dev = onnx_run_device(dev)
        result["ran_on"] = str(dev)
    dtype = torch.float16 if manifest.input["dtype"] == "float16" else torch.float32
    if entry["precision"] == "int8":
        cases = [c for c in cases if c.label == "images"]
        if not cases:
            result["error"] = (f"{path}: an int8 model is checked on photos only, and there "
                               f"are none (pass --images)")
            return result
    try:
        run = load_backend(path, entry["format"], dev, entry["device"])
    except (CarsegError, FileNotFoundError, ValueError) as e:
        result["error"] = str(e)
        return result
    logit_thr = math.log(manifest.threshold / (1.0 - manifest.threshold))
    spatial = bool(entry["dynamic"]["spatial"])
    size = manifest.spec.size
    rows = []
    with exact_fp32(dev, entry["precision"]):
        for c in cases:
            _check_case(run, c, dev, dtype, size, spatial, entry, logit_thr, rows)
    ok_rows = [r for r in rows if r.get("error") is None]
    max_diff = max((r["max_abs_diff"] for r in ok_rows), default=None)
    if any(math.isnan(r["max_abs_diff"]) for r in ok_rows):
        max_diff = float("nan")
    min_iou = min((r["mask_iou"] for r in ok_rows), default=None)
    errors = [r for r in rows if r.get("error")]
    passed = bool(ok_rows) and not errors and min_iou is not None and \
        min_iou >= tolerance.mask_iou and max_diff is not None and not math.isnan(max_diff) \
        and diffs_within(ok_rows, tolerance)
    if errors:
        result["error"] = f"{len(errors)} case(s) failed to run: {errors[0]['error']}"
    parity = {"passed": passed,
              "max_abs_diff": None if max_diff is None or math.isnan(max_diff) else max_diff,
              "mask_iou": min_iou, "tolerance": tolerance.to_json(), "cases": rows,
              "checked_at": utc_now()}
    result.update(passed=passed, parity=parity, max_abs_diff=max_diff, mask_iou=min_iou,
                  spatial=spatial, cases=len(rows))
    return result


def verify(folder: str | Path, images: str | Path | None = None,
           logdir: str | Path | None = None, batches: tuple[int, ...] = DEFAULT_BATCHES,
           tolerances: dict[str, Tolerance] | None = None, record: bool = True
           ) -> dict[str, Any]:
    """Check every artifact of `folder`; returns {"passed", "artifacts": [results...]}.

    Raises (CarsegError, FileNotFoundError, ValueError) when verification cannot run at all:
    no manifest, no logdir, a checkpoint that changed since export.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if not manifest.artifacts:
        raise CarsegError(f"{folder / MANIFEST_NAME}: no artifacts to verify")
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if any(b < 1 for b in batches):
        raise ValueError(f"--batches: expected positive batch sizes, got {list(batches)}")
    ckpt = Path(manifest.source["checkpoint"])
    if logdir is None:
        logdir = manifest.source["logdir"]
    elif (Path(logdir) / "checkpoints" / ckpt.name).is_file():
        ckpt = Path(logdir) / "checkpoints" / ckpt.name  # the logdir moved with its files
    if not Path(logdir).is_dir():
        raise FileNotFoundError(f"{logdir}: the logdir recorded in {folder / MANIFEST_NAME} is "
                                f"gone; pass --logdir")
    source = load_source(logdir, ckpt if ckpt.is_file() else "best")
    if source.checkpoint_sha256 != manifest.source["checkpoint_sha256"]:
        raise CarsegError(f"{source.checkpoint}: sha256 {source.checkpoint_sha256[:12]}… is not "
                          f"the checkpoint these artifacts were exported from "
                          f"({manifest.source['checkpoint_sha256'][:12]}…)")
    if source.spec.to_json() != manifest.preprocessing:
        raise CarsegError(f"{source.config_path}: preprocessing differs from "
                          f"{folder / MANIFEST_NAME}")
    log.info("verify: eager reference %s/%s from %s", source.model_kwargs["arch"],
             source.model_kwargs["encoder_name"], source.checkpoint)
    eager = build_eager(source, "cpu", torch.float32)
    paths = find_images(images, source)
    photos = [torch.from_numpy(read_rgb(p).copy()) for p in paths]  # writable: no warning
    cases = build_cases(eager, source.spec, photos, tuple(batches))
    log.info("verify: %d cases (random and %d photo(s)), batches %s, sizes %s and %s",
             len(cases), len(photos), list(batches), manifest.spec.size,
             "x".join(map(str, _second_hw(manifest.spec.size))))
    results = []
    for name in sorted(manifest.artifacts, key=list(ARTIFACT_NAMES).index):
        entry = manifest.artifacts[name]
        log.info("verify: %s (%s)", entry["file"], entry["precision"])
        res = check_artifact(folder, name, entry, manifest, cases,
                             tolerances[entry["precision"]])
        results.append(res)
        if res["parity"] is not None and record:
            manifest = with_parity(manifest, name, res["parity"])
    if record:
        write_manifest(manifest, folder)
        log.info("verify: parity recorded in %s", folder / MANIFEST_NAME)
    return {"folder": str(folder), "passed": all(r["passed"] for r in results),
            "photos": [str(p) for p in paths], "batches": list(batches),
            "artifacts": results}


def format_table(report: dict[str, Any]) -> str:
    head = ("artifact", "precision", "dynamic H/W", "cases", "max|diff|", "mask IoU",
            "tolerance", "result")
    rows = [head]
    for r in report["artifacts"]:
        p = r.get("parity") or {}
        tol = p.get("tolerance") or {}
        tol_s = (f"diff<={tol['max_abs_diff']:.0e}*scale, " if tol.get("max_abs_diff")
                 is not None else "") + (f"IoU>={tol['mask_iou']}" if tol else "")
        diff = r.get("max_abs_diff")
        iou = r.get("mask_iou")
        rows.append((r["artifact"], r["precision"],
                     "-" if "spatial" not in r else ("yes" if r["spatial"] else "no (size only)"),
                     str(r.get("cases", "-")),
                     "-" if diff is None else f"{diff:.2e}",
                     "-" if iou is None else f"{iou:.5f}", tol_s or "-",
                     "PASS" if r["passed"] else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    for r in report["artifacts"]:
        if r.get("error"):
            lines.append(f"{r['artifact']}: {r['error']}")
    return "\n".join(lines) + "\n"
