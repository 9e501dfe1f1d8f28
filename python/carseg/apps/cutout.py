"""`carseg cutout`: the seed tutorial's background removal, done properly.

Photos in (files and folders), for each `NAME_mask.png` and `NAME_cutout.jpg` (on white, a
colour or an image) or `NAME_cutout.png` (transparent), and with `matte` `NAME_alpha.png`, out,
at the photo's own resolution (or cropped to the car). With the manifest's refinement the mask
follows the photo's edges and the cutout's edge is soft and decontaminated. One bad photo is
reported and the others go on; nothing half-written is left (temporary name, then rename).
`cutout_stream` does one photo from bytes to bytes, for `carseg cutout - --output -`.

With the C++ predictor (backend native) the whole run is libcarseg's pipeline, the one
carseg_infer runs: decoding, batching, inference, encoding and writing in C++. With a Python
predictor, decoding and encoding run on worker threads while the predictor works.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carseg.errors import CarsegError, DataError
from carseg.io.encode import (
    JPEG_QUALITY,
    Backdrop,
    encode_alpha_png,
    encode_image,
    encode_mask_png,
    jpeg_cutout_refusal,
    parse_background,
)
from carseg.io.files import OutputExists, prepare_out_dir, write_atomic
from carseg.io.images import decode_rgb, read_rgb
from carseg.io.names import cutout_path, list_photos, mask_path, matte_path, outputs_for

log = logging.getLogger(__name__)


@dataclass
class CutoutReport:
    done: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.done) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Outputs:
    """What a run writes for each photo: the mask always; a cutout over `background` (None:
    none), cropped to the car grown by `crop` pixels (None: the whole photo); the alpha matte
    with `matte`."""

    background: str | None = "white"
    crop: int | None = None
    matte: bool = False
    quality: int = JPEG_QUALITY

    def __post_init__(self) -> None:
        if self.background is not None:
            parse_background(self.background, field="--background")
        if self.crop is not None and self.crop < 0:
            raise ValueError(f"--crop: expected a margin >= 0 pixels, got {self.crop}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality: expected 1 to 100, got {self.quality}")


def encode_outputs(r: dict[str, Any], outputs: Outputs) -> dict[str, bytes]:
    """A predictor's render() result as files' bytes, by kind: mask, cutout, alpha."""
    files = {"mask": encode_mask_png(r["mask"])}
    if r["cutout"] is not None:
        files["cutout"] = encode_image(r["cutout"], outputs.quality)[0]
    if outputs.matte:
        files["alpha"] = encode_alpha_png(r["alpha"])
    return files


def _write(path: Path, r: dict[str, Any], output: Path, outputs: Outputs,
           overwrite: bool) -> None:
    files = encode_outputs(r, outputs)  # all encoded before any is written
    if "cutout" in files:
        write_atomic(cutout_path(output, path, outputs.background or "white"), files["cutout"],
                     overwrite)
    if "alpha" in files:
        write_atomic(matte_path(output, path), files["alpha"], overwrite)
    write_atomic(mask_path(output, path), files["mask"], overwrite)


def refuse_early(photo: Path, rgb_shape: tuple[int, ...], output: Path, background: str | None,
                 overwrite: bool, matte: bool = False) -> None:
    """What refuses a photo before anything of it is written (as libcarseg's pipeline does):
    outputs that exist (unless overwrite), a photo too large for a JPEG cutout."""
    h, w = rgb_shape[:2]
    why = jpeg_cutout_refusal(w, h, "--background transparent")
    if background not in (None, "none", "transparent") and why:
        raise DataError(f"{photo}: {why}")
    if not overwrite:
        for out in outputs_for(photo, output, background or "none", matte):
            if out.exists() or out.is_symlink():
                raise OutputExists(f"{photo}: {out} exists, and this run did not write it; not "
                                   f"replaced (remove it, write elsewhere, or pass --overwrite)")


def cutout_stream(data: bytes, predictor: Any, outputs: Outputs, name: str = "<stdin>") -> bytes:
    """One photo's bytes in, one file's bytes out: the cutout, or the alpha matte (matte), or
    the mask (no background)."""
    rgb = decode_rgb(data, name)
    refuse_early(Path(name), rgb.shape, Path("/nonexistent"), outputs.background, True)
    r = predictor.render(rgb, outputs.background, crop=outputs.crop)
    files = encode_outputs(r, outputs)
    if outputs.matte:
        return files["alpha"]
    return files.get("cutout", files["mask"])


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=not sys.stderr.isatty())


def _is_native(predictor: Any) -> bool:
    return type(predictor).__module__ == "carseg._native"


def run_cutout(inputs: list[Path], predictor: Any, output: Path, background: str | None = "white",
               workers: int = 2, progress: bool = True, batch: int = 8,
               overwrite: bool = False, outputs: Outputs | None = None,
               decode: str = "cpu") -> CutoutReport:
    """Masks and cutouts of `inputs` in `output`. A photo whose outputs already exist is
    refused unless `overwrite`: a run never replaces a file it did not write. `outputs` (crop,
    matte, JPEG quality) overrides `background`. decode="gpu": JPEGs decoded by nvJPEG (the
    native predictor on CUDA only)."""
    outputs = outputs or Outputs(background=background)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if decode == "gpu" and not _is_native(predictor):
        raise ValueError("--decode gpu needs the native predictor (--backend native)")
    prepare_out_dir(output)
    photos, failed = list_photos(inputs, output)
    report = CutoutReport(failed=failed)
    bar = _progress_bar(len(photos), progress)
    t0 = time.monotonic()
    if _is_native(predictor):
        _run_native(photos, predictor, output, outputs, workers, batch, bar, report, overwrite,
                    decode)
    else:
        _run_python(photos, predictor, output, outputs, workers, bar, report, overwrite)
    if bar is not None:
        bar.close()
    report.seconds = time.monotonic() - t0
    return report


def _run_native(photos: list[Path], predictor: Any, output: Path, outputs: Outputs,
                workers: int, batch: int, bar: Any, report: CutoutReport,
                overwrite: bool, decode: str = "cpu") -> None:
    """libcarseg's folder pipeline over the C++ predictor."""
    from carseg import _native

    def show(done: int, total: int, failed: int, last: bool) -> None:
        bar.n = done
        bar.refresh()

    pipeline = _native.Pipeline(predictor, batch=batch, workers=workers,
                                cutout=outputs.background, overwrite=overwrite,
                                jpeg_quality=outputs.quality, matte=outputs.matte,
                                crop=outputs.crop, progress=show if bar is not None else None,
                                decode=decode)
    result = pipeline.run([str(p) for p in photos], str(output))
    for r in result["results"]:
        if r["ok"]:
            report.done.append(r["input"])
        else:
            report.failed.append({"path": r["input"], "reason": r["error"]})


def _run_python(photos: list[Path], predictor: Any, output: Path, outputs: Outputs,
                workers: int, bar: Any, report: CutoutReport, overwrite: bool) -> None:
    # Separate pools, both bounded: decodes run ahead of the predictor by at most 2*workers
    # photos, and at most 2*workers finished photos wait to be written (each holds a
    # full-resolution image), however fast the predictor is.
    backdrop = None if outputs.background is None else Backdrop.parse(outputs.background)
    with ThreadPoolExecutor(workers, thread_name_prefix="carseg-decode") as decoders, \
            ThreadPoolExecutor(workers, thread_name_prefix="carseg-write") as writers:
        decodes: deque[tuple[Path, Future]] = deque()
        writes: deque[tuple[Path, Future]] = deque()
        todo = iter(photos)

        def refill() -> None:
            while len(decodes) < 2 * workers:
                p = next(todo, None)
                if p is None:
                    return
                decodes.append((p, decoders.submit(read_rgb, p)))

        def finish_write() -> None:
            path, fut = writes.popleft()
            try:
                fut.result()
                report.done.append(str(path))
            except (OSError, RuntimeError, ValueError) as e:
                report.failed.append({"path": str(path), "reason": f"writing outputs: {e}"})

        refill()
        while decodes:
            path, fut = decodes.popleft()
            refill()
            try:
                rgb = fut.result()
                refuse_early(path, rgb.shape, output, outputs.background, overwrite,
                             outputs.matte)
                r = predictor.render(rgb, backdrop, crop=outputs.crop)
            except (CarsegError, OSError, ValueError, RuntimeError) as e:
                report.failed.append({"path": str(path), "reason": str(e)})
            else:
                while len(writes) >= 2 * workers:
                    finish_write()
                writes.append((path, writers.submit(_write, path, r, output, outputs,
                                                    overwrite)))
            if bar is not None:
                bar.update(1)
        while writes:
            finish_write()
