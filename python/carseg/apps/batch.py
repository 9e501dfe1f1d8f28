"""Batch inference on Ray Data: `carseg batch INPUT... --model DIR --output DIR`.

Photos are listed and spread over an actor pool, one predictor per actor. With a Python
backend, photos are decoded in parallel tasks, predicted by the actors, and their mask and
cutout encoded and written in parallel tasks. With the C++ backend (native), each actor runs
libcarseg's folder pipeline, the one carseg_infer runs, over its share of the photos. Every
output is written to a temporary name and renamed, so a photo whose outputs all exist is
finished: a second run skips it, and an interrupted job completes without redoing or
duplicating work. Locally by default; `--address auto` or `ray://host:10001` runs the same job
on a cluster.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carseg.apps._ray import local_ray, raise_if_stopped, require_ray
from carseg.errors import CarsegError
from carseg.io.encode import (
    BACKGROUNDS,
    Backdrop,
    encode_image,
    encode_mask_png,
    jpeg_cutout_refusal,
    parse_background,
)
from carseg.io.files import prepare_out_dir, write_atomic
from carseg.io.images import read_rgb
from carseg.io.names import list_photos, outputs_for
from carseg.runtime.predictor import check_decode, open_predictor, trial_open

log = logging.getLogger(__name__)

def _decode(row: dict[str, Any]) -> dict[str, Any]:
    try:
        image = read_rgb(row["path"])
        return {"path": row["path"], "image": image, "error": ""}
    except (CarsegError, OSError, ValueError) as e:
        return {"path": row["path"], "image": np.zeros((1, 1, 3), np.uint8), "error": str(e)}


class _PredictActor:
    """Masks in batches; with a cutout, each photo's render() (the refined matte's soft,
    decontaminated cutout)."""

    def __init__(self, model_dir: str, backend: str, device: str, cutout: str = "none") -> None:
        self.predictor = open_predictor(model_dir, backend=backend, device=device)
        self.cutout = cutout
        # parsed once an actor: an image backdrop is read here, not for every photo
        self.backdrop = None if cutout == "none" else Backdrop.parse(cutout, field="--cutout")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = list(batch["image"])
        errors = list(batch["error"])
        good = [i for i, e in enumerate(errors) if not e]
        masks: list[np.ndarray] = [np.zeros((1, 1), np.uint8)] * len(images)
        cuts: list[np.ndarray | None] = [None] * len(images)
        if good:
            try:
                if self.cutout == "none":
                    predicted = self.predictor.predict_batch([images[i] for i in good])
                    for i, m in zip(good, predicted, strict=True):
                        masks[i] = np.asarray(m, np.uint8)
                else:
                    for i in good:
                        r = self.predictor.render(images[i], self.backdrop)
                        masks[i], cuts[i] = np.asarray(r["mask"], np.uint8), r["cutout"]
            except Exception as e:  # the whole batch failed: say so for each photo
                for i in good:
                    errors[i] = f"prediction failed: {e.__class__.__name__}: {e}"
        return {"path": batch["path"], "image": np.array(images + [None], dtype=object)[:-1],
                "mask": np.array(masks + [None], dtype=object)[:-1],
                "cutout": np.array(cuts + [None], dtype=object)[:-1],
                "error": np.array(errors, dtype=object)}


class _PipelineActor:
    """backend native: libcarseg's pipeline over each batch of photo paths, in C++ throughout."""

    def __init__(self, model_dir: str, device: str, output: str, cutout: str,
                 batch_size: int, decode: str = "cpu") -> None:
        from carseg import _native

        self.predictor = open_predictor(model_dir, backend="native", device=device)
        # overwrite: the job owns its output folder; photos whose outputs all exist were
        # skipped, and what a killed run left of the others is replaced
        self.pipeline = _native.Pipeline(self.predictor, batch=batch_size, workers=1,
                                         cutout=None if cutout == "none" else cutout,
                                         overwrite=True, decode=decode)
        self.output = output

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.pipeline.run([str(p) for p in batch["path"]], self.output)
        rows = result["results"]
        return {"path": np.array([r["input"] for r in rows], dtype=object),
                "status": np.array(["done" if r["ok"] else "failed" for r in rows], dtype=object),
                "reason": np.array([r["error"] for r in rows], dtype=object)}


def _write(row: dict[str, Any], output: str, cutout: str) -> dict[str, Any]:
    if row["error"]:
        return {"path": row["path"], "status": "failed", "reason": row["error"]}
    photo = Path(row["path"])
    outs = outputs_for(photo, Path(output), cutout)
    h, w = row["image"].shape[:2]
    # refused before anything is written
    why = jpeg_cutout_refusal(w, h, "--cutout transparent")
    if cutout not in ("none", "transparent") and why:
        return {"path": row["path"], "status": "failed", "reason": f"{photo}: {why}"}
    try:
        data = [encode_mask_png(row["mask"])]
        if cutout != "none":
            data.append(encode_image(row["cutout"])[0])
        # the mask last: a photo counts as done only once every output exists
        for path, blob in reversed(list(zip(outs, data, strict=True))):
            write_atomic(path, blob)
    except Exception as e:  # noqa: BLE001 - the photo's error, never the job's
        return {"path": row["path"], "status": "failed", "reason": f"writing outputs: {e}"}
    return {"path": row["path"], "status": "done", "reason": ""}


@dataclass
class Report:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""  # what stopped the run before it finished, if something did

    def to_json(self) -> dict[str, Any]:
        n = len(self.done)
        return {"ok": not self.error and not self.failed, "error": self.error,
                "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "counts": {"done": n, "skipped": len(self.skipped), "failed": len(self.failed)},
                "seconds": round(self.seconds, 2),
                "images_per_s": round(n / self.seconds, 3) if self.seconds > 0 and n else 0.0}


def run_batch(inputs: list[Path], model_dir: Path, output: Path, *, address: str = "local",
              workers: int = 1, batch_size: int = 4, device: str = "cpu",
              cutout: str = "white", backend: str = "torchscript", num_cpus: int | None = None,
              handle_signals: bool = False, decode: str = "cpu") -> Report:
    """The job; `handle_signals` (the CLI's, from the main thread): SIGINT and SIGTERM end it
    through KeyboardInterrupt, and the Ray it started is shut down (apps._ray.local_ray)."""
    require_ray("Ray Data")
    import ray
    import ray.data

    parse_background(cutout, allow_none=True, field="--cutout")
    if cutout not in (*BACKGROUNDS, "none") and not cutout.startswith("#"):
        Backdrop.parse(cutout, field="--cutout")  # an image that does not decode: say so now
        cutout = str(Path(cutout).resolve())  # the workers' folder may differ
    if workers < 1 or batch_size < 1:
        raise ValueError(f"--workers and --batch-size must be >= 1, got {workers}, {batch_size}")
    check_decode(decode, backend, device)
    if not (model_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'manifest.json'}: not an artifact folder")
    log.info("carseg batch: each actor runs %s, JPEG decoding on the %s",
             trial_open(model_dir, backend, device), decode.upper())
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
    with local_ray(handle_signals=handle_signals,
                   address=None if address == "local" else address,
                   num_cpus=num_cpus if address == "local" else None, include_dashboard=False,
                   logging_level=logging.WARNING):
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = True
        ds = ray.data.from_items([{"path": str(p)} for p in todo],
                                 override_num_blocks=min(len(todo), 4 * workers))
        actors = {"batch_size": batch_size, "batch_format": "numpy",
                  "compute": ray.data.ActorPoolStrategy(size=workers),
                  "num_gpus": 1 / workers if device.startswith("cuda") else 0}
        model, out = str(model_dir.resolve()), str(output.resolve())
        if backend == "native":
            ds = ds.map_batches(_PipelineActor, fn_constructor_kwargs={
                "model_dir": model, "device": device, "output": out, "cutout": cutout,
                "batch_size": batch_size, "decode": decode}, **actors)
        else:
            ds = ds.map(_decode)
            ds = ds.map_batches(_PredictActor, fn_constructor_kwargs={
                "model_dir": model, "backend": backend, "device": device, "cutout": cutout},
                **actors)
            ds = ds.map(_write, fn_kwargs={"output": out, "cutout": cutout})
        for row in ds.iter_rows():
            if handle_signals:
                # A signal whose KeyboardInterrupt Ray Data's own code caught (its iterator
                # runs threads and retries) stops the job here, at the next row, not at its end.
                raise_if_stopped()
            if row["status"] == "done":
                report.done.append(row["path"])
            else:
                report.failed.append({"path": row["path"], "reason": row["reason"]})
    if handle_signals:
        raise_if_stopped()  # one that Ray's own code caught, late in the job or in shutdown
    report.seconds = time.monotonic() - t0
    report.done.sort()
    return report


def write_report(report: Report, path: Path) -> None:
    write_atomic(path, json.dumps(report.to_json(), indent=2) + "\n")
