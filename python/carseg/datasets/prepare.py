"""Pair Carvana-layout photos with their masks and split them into train/valid CSVs; read
such a CSV back (read_csv, what training and the gallery use).

The split is by car, not by photo: the views of one car are near-duplicates, and a car
seen in both splits would flatter the validation score.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carseg.datasets.synth import IMAGE_DIR, MASK_DIR, MASK_SUFFIX
from carseg.errors import DataError
from carseg.io.files import write_atomic

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
TRAIN_CSV = "dataset_train.csv"
VALID_CSV = "dataset_valid.csv"
COLUMNS = ("image", "mask")  # the CSV format that training reads


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path

    @property
    def car(self) -> str:
        """Carvana names photos <car>_<view>; a name without a view is its own car."""
        stem = self.image.stem
        return stem.rsplit("_", 1)[0] if "_" in stem else stem


def pair_files(datapath: Path) -> list[Pair]:
    """Every photo under DIR/train with its DIR/train_masks/<stem>_mask.gif, sorted by name.

    Raises DataError naming each photo without a mask and each mask without a photo.
    """
    if not datapath.is_dir():
        raise DataError(f"{datapath}: data folder does not exist")
    img_dir, mask_dir = datapath / IMAGE_DIR, datapath / MASK_DIR
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder missing (expected Carvana's layout: "
                            f"{IMAGE_DIR}/<car>_<view>.jpg and "
                            f"{MASK_DIR}/<car>_<view>{MASK_SUFFIX})")
    images = {p.stem: p for p in img_dir.iterdir()
              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.name[: -len(MASK_SUFFIX)]: p for p in mask_dir.iterdir()
             if p.is_file() and p.name.endswith(MASK_SUFFIX)}
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    problems = [f"{images[s]}: no mask (expected {mask_dir / (s + MASK_SUFFIX)})" for s in no_mask]
    problems += [f"{masks[s]}: no image (expected {img_dir / s}.jpg)" for s in no_image]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{datapath}: {len(problems)} unpaired file(s):\n  {shown}{more}")
    if not images:
        raise DataError(f"{img_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return [Pair(images[s], masks[s]) for s in sorted(images)]


def split_by_car(pairs: list[Pair], valid_size: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    if not 0.0 < valid_size < 1.0:
        raise ValueError(f"--valid-size must be in (0, 1), got {valid_size}")
    cars = sorted({p.car for p in pairs})
    if len(cars) < 2:
        raise DataError(f"need photos of at least 2 cars to split train/valid, got {len(cars)}")
    order = np.random.default_rng(seed).permutation(len(cars))
    n_valid = min(len(cars) - 1, max(1, round(valid_size * len(cars))))
    valid_cars = {cars[i] for i in order[:n_valid]}
    train = [p for p in pairs if p.car not in valid_cars]
    valid = [p for p in pairs if p.car in valid_cars]
    return train, valid


def _write_csv(path: Path, pairs: list[Pair]) -> None:
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(COLUMNS)
    for p in pairs:
        w.writerow([str(p.image), str(p.mask)])
    write_atomic(path, text.getvalue())




def read_csv(path: str | Path) -> list[tuple[Path, Path]]:
    """Rows of a dataset CSV (columns image, mask); relative paths are relative to the CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset CSV not found (run `carseg prepare` first?)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; "
                            f"expected {list(COLUMNS)}, got {reader.fieldnames}")
        rows = []
        for i, r in enumerate(reader, start=2):
            if not r["image"] or not r["mask"]:
                raise DataError(f"{path}:{i}: empty image or mask path")
            rows.append(tuple((path.parent / r[c]) if not Path(r[c]).is_absolute()
                              else Path(r[c]) for c in COLUMNS))
    if not rows:
        raise DataError(f"{path}: empty data set (no rows after the header)")
    return rows  # type: ignore[return-value]


def prepare(datapath: Path, valid_size: float = 0.2, seed: int = 42,
            out: Path | None = None) -> tuple[Path, Path]:
    """Write dataset_train.csv and dataset_valid.csv (absolute paths) into `out` (default:
    the data folder); returns their paths."""
    datapath = datapath.resolve()
    pairs = pair_files(datapath)
    train, valid = split_by_car(pairs, valid_size, seed)
    out = (out or datapath).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = out / TRAIN_CSV, out / VALID_CSV
        _write_csv(paths[0], train)
        _write_csv(paths[1], valid)
    except OSError as e:
        raise DataError(f"{out}: cannot write the CSVs: {e.strerror}") from e
    log.info("%d train / %d valid images (%d cars)", len(train), len(valid),
             len({p.car for p in pairs}))
    return paths
