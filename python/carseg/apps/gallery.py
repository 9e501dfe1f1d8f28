"""A picture of what the model does: photo, true mask, predicted mask with its Dice, cutout.

Predicted masks come from a folder of `<stem>_mask.png` files (what carseg_infer writes) or,
where a photo has none there, from the reference predictor over an artifact folder.
Writes a PNG and a small self-contained HTML page.
"""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from carseg.datasets.prepare import read_csv
from carseg.errors import DataError
from carseg.io.encode import composite
from carseg.io.files import write_atomic
from carseg.io.images import read_mask, read_rgb
from carseg.io.names import mask_path
from carseg.runtime.reference import ReferencePredictor

log = logging.getLogger(__name__)

TILE_W = 240


@dataclass(frozen=True)
class Row:
    name: str
    photo: np.ndarray  # HxWx3 RGB
    truth: np.ndarray  # HxW {0,1}
    pred: np.ndarray  # HxW {0,1}

    @property
    def dice(self) -> float:
        inter = float((self.truth & self.pred).sum())
        total = float(self.truth.sum() + self.pred.sum())
        return 1.0 if total == 0 else 2 * inter / total


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    return Row("", np.zeros((1, 1, 3), np.uint8), truth, pred).dice


def _predicted(photo_path: Path, photo: np.ndarray, masks: Path | None, predictor) -> np.ndarray:
    if masks is not None:
        p = mask_path(masks, photo_path)
        if p.is_file():
            m = read_mask(p)
            if m.shape != photo.shape[:2]:
                raise DataError(f"{p}: predicted mask is {m.shape[1]}x{m.shape[0]}, its photo "
                                f"{photo_path} is {photo.shape[1]}x{photo.shape[0]}")
            return m
    if predictor is None:
        raise DataError(f"{photo_path}: no predicted mask in {masks} and no model to predict with")
    return np.asarray(predictor.predict(photo)).astype(np.uint8)


def describe_dice(rows: list[Row]) -> str:
    """Which Dice this is: full resolution, over which photos."""
    mean = float(np.mean([r.dice for r in rows]))
    h, w = rows[0].truth.shape
    return (f"Full-resolution Dice (each photo's mask at its own size, {w}x{h} for the first) "
            f"over these {len(rows)} held-out photos: {mean:.4f}")


def collect(csv_path: Path, masks: Path | None = None, model: Path | None = None,
            num: int = 12) -> list[Row]:
    predictor = None
    if model is not None:
        predictor = ReferencePredictor(model)
    rows = []
    for image_path, truth_path in read_csv(csv_path)[:num]:
        photo = read_rgb(image_path)
        rows.append(Row(image_path.stem, photo, read_mask(truth_path),
                        _predicted(image_path, photo, masks, predictor)))
    if not rows:
        raise DataError(f"{csv_path}: no photos for the gallery")
    return rows


def _tile(img: np.ndarray, label: str) -> np.ndarray:
    h, w = img.shape[:2]
    th = round(h * TILE_W / w)
    t = cv2.resize(img, (TILE_W, th), interpolation=cv2.INTER_AREA)
    if t.ndim == 2:
        t = np.repeat(t[..., None], 3, axis=2)
    t = t.copy()
    cv2.rectangle(t, (0, 0), (TILE_W, 18), (255, 255, 255), -1)
    cv2.putText(t, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 20), 1, cv2.LINE_AA)
    return t


def tiles(row: Row) -> list[np.ndarray]:
    cutout = composite(row.photo, row.pred, "white")
    # errors in colour: missed car pixels red, background taken as car blue
    pred_vis = np.repeat((row.pred * 255)[..., None], 3, axis=2).astype(np.uint8)
    pred_vis[(row.truth == 1) & (row.pred == 0)] = (230, 40, 40)
    pred_vis[(row.truth == 0) & (row.pred == 1)] = (40, 90, 230)
    return [_tile(row.photo, row.name), _tile(row.truth * 255, "true mask"),
            _tile(pred_vis, f"predicted, Dice {row.dice:.4f}"), _tile(cutout, "cutout")]


def write(rows: list[Row], png: Path, html_path: Path | None = None, title: str = "") -> Path:
    lines = [np.concatenate(tiles(r), axis=1) for r in rows]
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 4), (0, width - line.shape[1]), (0, 0)), constant_values=255)
             for line in lines]
    grid = np.concatenate(lines, axis=0)
    png.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{png}: encoding the gallery as PNG failed")
    write_atomic(png, buf.tobytes())
    if html_path is not None:
        cells = []
        for r in rows:
            imgs = []
            for t in tiles(r):
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(t, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, 85])
                imgs.append(f'<img src="data:image/jpeg;base64,{base64.b64encode(buf).decode()}">')
            cells.append(f"<tr><td>{''.join(imgs)}</td></tr>")
        page = (f"<!doctype html><meta charset=utf-8><title>carseg gallery</title>"
                f"<style>body{{font-family:sans-serif}}img{{margin:2px}}</style>"
                f"<h1>carseg gallery</h1><p>{html.escape(title)} {describe_dice(rows)}. "
                f"Predicted masks: red = car missed, blue = background taken for car.</p>"
                f"<table>{''.join(cells)}</table>")
        write_atomic(html_path, page)
    return png
