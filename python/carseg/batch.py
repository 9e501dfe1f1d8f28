"""Batch inference on Ray Data: `carseg batch INPUT... --model DIR --output DIR`.

Photos are listed, decoded in parallel tasks, predicted in an actor pool (one predictor per
actor), and their mask and cutout encoded and written in parallel tasks. Every output is
written to a temporary name and renamed, so a photo whose outputs all exist is finished: a
second run skips it, and an interrupted job completes without redoing or duplicating work.
Locally by default; `--address auto` or `ray://host:10001` runs the same job on a cluster.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carseg.errors import CarsegError
from carseg.outputs import prepare_out_dir

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
CUTOUT_SUFFIX = {"white": ".jpg", "transparent": ".png"}


def list_photos(inputs: list[Path], output: Path | None = None
                ) -> tuple[list[Path], list[dict[str, str]]]:
    """Photos named or found (not recursively) in folders; missing inputs are failures.

    In a folder that is also the output folder, carseg's own outputs (`*_mask.*`,
    `*_cutout.*`) are not photos: a second run must not segment the first run's cutouts.
    """
    out_dir = output.resolve() if output is not None else None
    photos, failed = [], []
    for p in inputs:
        if p.is_dir():
            ours = out_dir is not None and p.resolve() == out_dir
            photos += sorted(q for q in p.iterdir()
                             if q.is_file() and q.suffix.lower() in PHOTO_SUFFIXES
                             and not (ours and q.stem.endswith(("_mask", "_cutout"))))
        elif p.is_file():
            photos.append(p)
        else:
            failed.append({"path": str(p), "reason": "no such file or folder"})
    stems: dict[str, Path] = {}
    unique = []
    for p in photos:
        if p.stem in stems:  # two photos would write the same outputs
            failed.append({"path": str(p), "reason": f"same name as {stems[p.stem]}; "
                           f"outputs would collide"})
            continue
        stems[p.stem] = p
        unique.append(p.resolve())
    return unique, failed


def outputs_for(photo: Path, output: Path, cutout: str) -> list[Path]:
    outs = [output / f"{photo.stem}_mask.png"]
    if cutout != "none":
        outs.append(output / f"{photo.stem}_cutout{CUTOUT_SUFFIX[cutout]}")
    return outs


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    from carseg.imageio import read_rgb

    try:
        image = read_rgb(row["path"])
        return {"path": row["path"], "image": image, "error": ""}
    except (CarsegError, OSError, ValueError) as e:
        return {"path": row["path"], "image": np.zeros((1, 1, 3), np.uint8), "error": str(e)}


class _PredictActor:
    def __init__(self, model_dir: str, backend: str, device: str) -> None:
        from carseg.predictor import open_predictor

        self.predictor = open_predictor(model_dir, backend=backend, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = list(batch["image"])
        errors = list(batch["error"])
        good = [i for i, e in enumerate(errors) if not e]
        masks: list[np.ndarray] = [np.zeros((1, 1), np.uint8)] * len(images)
        if good:
            try:
                predicted = self.predictor.predict_batch([images[i] for i in good])
                for i, m in zip(good, predicted, strict=True):
                    masks[i] = np.asarray(m, np.uint8)
            except Exception as e:  # the whole batch failed: say so for each photo
                for i in good:
                    errors[i] = f"prediction failed: {e.__class__.__name__}: {e}"
        return {"path": batch["path"], "image": np.array(images + [None], dtype=object)[:-1],
                "mask": np.array(masks + [None], dtype=object)[:-1],
                "error": np.array(errors, dtype=object)}


def _write(row: dict[str, Any], output: str, cutout: str) -> dict[str, Any]:
    from carseg.outputs import encode_cutout, encode_mask_png, write_atomic

    if row["error"]:
        return {"path": row["path"], "status": "failed", "reason": row["error"]}
    photo = Path(row["path"])
    outs = outputs_for(photo, Path(output), cutout)
    try:
        data = [encode_mask_png(row["mask"])]
        if cutout != "none":
            data.append(encode_cutout(row["image"], row["mask"], cutout)[0])
        # the mask last: a photo counts as done only once every output exists
        for path, blob in reversed(list(zip(outs, data, strict=True))):
            write_atomic(path, blob)
    except OSError as e:
        return {"path": row["path"], "status": "failed", "reason": f"writing outputs: {e}"}
    return {"path": row["path"], "status": "done", "reason": ""}


@dataclass
class Report:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        n = len(self.done)
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed,
                "counts": {"done": n, "skipped": len(self.skipped), "failed": len(self.failed)},
                "seconds": round(self.seconds, 2),
                "images_per_s": round(n / self.seconds, 3) if self.seconds > 0 and n else 0.0}


def run_batch(inputs: list[Path], model_dir: Path, output: Path, *, address: str = "local",
              workers: int = 1, batch_size: int = 4, device: str = "cpu",
              cutout: str = "white", backend: str = "torchscript", num_cpus: int | None = None
              ) -> Report:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        from carseg.serving import EXTRA_HINT

        raise CarsegError(f"Ray Data is not installed ({e}); {EXTRA_HINT}") from None
    if cutout not in ("white", "transparent", "none"):
        raise ValueError(f"--cutout: expected white, transparent or none, got {cutout!r}")
    if workers < 1 or batch_size < 1:
        raise ValueError(f"--workers and --batch-size must be >= 1, got {workers}, {batch_size}")
    if not (model_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'manifest.json'}: not an artifact folder")
    prepare_out_dir(output)
    # temporaries left by an interrupted run are never outputs (one job per output folder)
    for stale in output.glob(".*.tmp*"):
        stale.unlink(missing_ok=True)

    report = Report()
    photos, report.failed = list_photos(inputs, output)
    todo = []
    for p in photos:
        if all(o.is_file() for o in outputs_for(p, output, cutout)):
            report.skipped.append(str(p))
        else:
            todo.append(p)
    log.info("%d photo(s): %d to do, %d already done, %d unusable", len(photos) +
             len(report.failed), len(todo), len(report.skipped), len(report.failed))
    if not todo:
        return report

    t0 = time.monotonic()
    started = False
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, num_cpus=num_cpus
                 if address == "local" else None, include_dashboard=False,
                 logging_level=logging.WARNING)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = True
        ds = ray.data.from_items([{"path": str(p)} for p in todo],
                                 override_num_blocks=min(len(todo), 4 * workers))
        ds = ds.map(_decode)
        ds = ds.map_batches(_PredictActor, batch_size=batch_size, batch_format="numpy",
                            fn_constructor_kwargs={"model_dir": str(model_dir.resolve()),
                                                   "backend": backend, "device": device},
                            compute=ray.data.ActorPoolStrategy(size=workers),
                            num_gpus=1 / workers if device.startswith("cuda") else 0)
        ds = ds.map(_write, fn_kwargs={"output": str(output.resolve()), "cutout": cutout})
        for row in ds.iter_rows():
            if row["status"] == "done":
                report.done.append(row["path"])
            else:
                report.failed.append({"path": row["path"], "reason": row["reason"]})
    finally:
        if started:
            ray.shutdown()
    report.seconds = time.monotonic() - t0
    report.done.sort()
    return report


def write_report(report: Report, path: Path) -> None:
    from carseg.outputs import write_atomic

    write_atomic(path, (json.dumps(report.to_json(), indent=2) + "\n").encode())
