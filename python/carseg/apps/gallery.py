"""A picture of what the model does: photo, true mask, predicted mask with its Dice, cutout,
and (given the model) a zoomed crop of the car's edge without and with refinement.

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
    edge: np.ndarray | None = None  # edge_crop(): photo | without refinement | with it

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


def edge_crop(rgb: np.ndarray, plain: np.ndarray, alpha: np.ndarray, size: int = 64,
              zoom: int = 3, truth: np.ndarray | None = None) -> np.ndarray:
    """Side by side, `zoom`x: the photo, its white cutout from the unrefined mask `plain`, and
    the soft cutout from the refined matte `alpha` (0..255), around the `size` px square of the
    car's edge where the two masks differ most (given the true mask: where the refinement put
    most pixels right that the plain mask had wrong)."""
    h, w = plain.shape
    size = min(size, h, w)
    refined = alpha > 127
    if truth is None:
        diff = (plain.astype(bool) != refined).astype(np.float64)
    else:
        diff = ((plain.astype(bool) != truth) & (refined == truth)).astype(np.float64)
    c = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    a = alpha[..., None].astype(np.float32) / 255
    tiles_ = [rgb, np.where(plain[..., None] > 0, rgb, 255).astype(np.uint8),
              (rgb * a + 255 * (1 - a)).round().astype(np.uint8)]
    big = [np.kron(t[y:y + size, x:x + size], np.ones((zoom, zoom, 1), np.uint8)) for t in tiles_]
    gap = np.full((size * zoom, 4, 3), 255, np.uint8)
    return np.concatenate([big[0], gap, big[1], gap, big[2]], axis=1)


def collect(csv_path: Path, masks: Path | None = None, model: Path | None = None,
            num: int = 12) -> list[Row]:
    predictor = plain = None
    if model is not None:
        predictor = ReferencePredictor(model)
        if predictor.refine is not None:
            plain = ReferencePredictor(model, refine=False)
    rows = []
    for image_path, truth_path in read_csv(csv_path)[:num]:
        photo = read_rgb(image_path)
        edge = None
        if plain is not None and predictor is not None:
            edge = edge_crop(photo, np.asarray(plain.predict(photo)),
                             np.asarray(predictor.predict_matte(photo)[1]))
        rows.append(Row(image_path.stem, photo, read_mask(truth_path),
                        _predicted(image_path, photo, masks, predictor), edge))
    if not rows:
        raise DataError(f"{csv_path}: no photos for the gallery")
    return rows


def _tile(img: np.ndarray, label: str, height: int | None = None) -> np.ndarray:
    """`img` scaled to TILE_W wide, or to `height` high, with `label` on a white band."""
    h, w = img.shape[:2]
    width, th = (TILE_W, round(h * TILE_W / w)) if height is None else (round(w * height / h),
                                                                         height)
    t = cv2.resize(img, (width, th), interpolation=cv2.INTER_AREA if width < w
                   else cv2.INTER_NEAREST)
    if t.ndim == 2:
        t = np.repeat(t[..., None], 3, axis=2)
    t = t.copy()
    cv2.rectangle(t, (0, 0), (width, 18), (255, 255, 255), -1)
    cv2.putText(t, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 20), 1, cv2.LINE_AA)
    return t


def tiles(row: Row) -> list[np.ndarray]:
    cutout = composite(row.photo, row.pred, "white")
    # errors in colour: missed car pixels red, background taken as car blue
    pred_vis = np.repeat((row.pred * 255)[..., None], 3, axis=2).astype(np.uint8)
    pred_vis[(row.truth == 1) & (row.pred == 0)] = (230, 40, 40)
    pred_vis[(row.truth == 0) & (row.pred == 1)] = (40, 90, 230)
    out = [_tile(row.photo, row.name), _tile(row.truth * 255, "true mask"),
           _tile(pred_vis, f"predicted, Dice {row.dice:.4f}"), _tile(cutout, "cutout")]
    if row.edge is not None:
        out.append(_tile(row.edge, "edge: photo | not refined | refined", out[0].shape[0]))
    return out


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
