"""`carseg cutout`: the seed tutorial's background removal, done properly.

Photos in (files and folders), for each `NAME_mask.png` and `NAME_cutout.jpg` (white
background) or `NAME_cutout.png` (transparent) out, at the photo's own resolution. Decoding
and encoding run on worker threads while the predictor works; one bad photo is reported and
the others go on; nothing half-written is left (temporary name, then rename).
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

import numpy as np

from carseg.batch import list_photos
from carseg.errors import CarsegError
from carseg.outputs import prepare_out_dir

log = logging.getLogger(__name__)


@dataclass
class CutoutReport:
    done: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.done) / self.seconds if self.seconds > 0 else 0.0


def _decode(path: Path) -> np.ndarray:
    from carseg.imageio import read_rgb

    return read_rgb(path)


def _write(path: Path, rgb: np.ndarray, mask: np.ndarray, output: Path, background: str) -> None:
    from carseg.outputs import encode_cutout, encode_mask_png, write_atomic

    cut, suffix = encode_cutout(rgb, mask, background)
    write_atomic(output / f"{path.stem}_cutout{suffix}", cut)
    write_atomic(output / f"{path.stem}_mask.png", encode_mask_png(mask))


def run_cutout(inputs: list[Path], predictor: Any, output: Path, background: str = "white",
               workers: int = 2, progress: bool = True) -> CutoutReport:
    if background not in ("white", "transparent"):
        raise ValueError(f"--background: expected white or transparent, got {background!r}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    prepare_out_dir(output)
    photos, failed = list_photos(inputs, output)
    report = CutoutReport(failed=failed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(photos), unit="img", file=sys.stderr, disable=not sys.stderr.isatty())
    t0 = time.monotonic()
    # Separate pools, both bounded: decodes run ahead of the predictor by at most 2*workers
    # photos, and at most 2*workers finished photos wait to be written (each holds a
    # full-resolution image), however fast the predictor is.
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
                decodes.append((p, decoders.submit(_decode, p)))

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
                mask = np.asarray(predictor.predict(rgb), dtype=np.uint8)
            except (CarsegError, OSError, ValueError, RuntimeError) as e:
                report.failed.append({"path": str(path), "reason": str(e)})
            else:
                while len(writes) >= 2 * workers:
                    finish_write()
                writes.append((path, writers.submit(_write, path, rgb, mask, output,
                                                    background)))
            if bar is not None:
                bar.update(1)
        while writes:
            finish_write()
    if bar is not None:
        bar.close()
    report.seconds = time.monotonic() - t0
    return report
