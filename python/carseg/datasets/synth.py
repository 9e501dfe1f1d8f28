"""A Carvana-like data set, drawn offline.

Each car has an id, a body type, proportions and a paint; it is photographed from several
views around a turntable (side, three-quarter, front, back), in a studio with a wall, a
floor, a soft shadow and sensor noise. The mask covers what Carvana's masks cover: body,
cabin with its windows, and wheels. The layout is Carvana's own:

    DIR/train/<car>_<view>.jpg
    DIR/train_masks/<car>_<view>_mask.gif

Everything is a pure function of (seed, car index), so a data set is reproducible and can be
extended or regenerated in part.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carseg.io.files import write_atomic

log = logging.getLogger(__name__)

IMAGE_DIR = "train"
MASK_DIR = "train_masks"
MASK_SUFFIX = "_mask.gif"


@dataclass(frozen=True)
class CarStyle:
    """What stays the same for one car across its views."""

    body: str  # sedan | hatch | suv
    paint: tuple[float, float, float]  # BGR, 0..255
    glass: tuple[float, float, float]
    rim: tuple[float, float, float]
    belt: float  # beltline height, in car lengths
    roof: float  # roof height above the beltline
    clearance: float
    wheel_r: float
    # x of the windshield's base, the roof's front and back, the rear window's base
    cabin: tuple[float, float, float, float]
    width: float  # car width, in car lengths
    wall: tuple[float, float, float]
    floor: tuple[float, float, float]


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W); refuses anything else with the reason."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size: expected HxW such as 640x960, got {text!r}") from None
    if h < 64 or w < 64 or h > 8192 or w > 8192:
        raise ValueError(f"--size: each side must be in [64, 8192], got {h}x{w}")
    return h, w


def _paint(rng: np.random.Generator) -> tuple[float, float, float]:
    # About 40% of real cars are white, grey, silver or black: colour alone must not
    # separate car from studio.
    if rng.random() < 0.4:
        v = float(rng.choice([30, 70, 150, 200, 235]) + rng.normal(0, 10))
        return (v, v, v)
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(80, 230)]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return (float(b), float(g), float(r))


def car_style(rng: np.random.Generator) -> CarStyle:
    body = str(rng.choice(["sedan", "hatch", "suv"], p=[0.45, 0.3, 0.25]))
    belt = {"sedan": 0.25, "hatch": 0.27, "suv": 0.33}[body] + rng.uniform(-0.02, 0.02)
    roof = {"sedan": 0.15, "hatch": 0.16, "suv": 0.17}[body] + rng.uniform(-0.015, 0.015)
    a1 = rng.uniform(0.26, 0.33)
    a2 = a1 + rng.uniform(0.11, 0.16)
    a3 = {"sedan": rng.uniform(0.66, 0.72), "hatch": rng.uniform(0.8, 0.86),
          "suv": rng.uniform(0.84, 0.9)}[body]
    a4 = min(0.985, a3 + {"sedan": 0.14, "hatch": 0.08, "suv": 0.06}[body])
    wall_v = rng.uniform(150, 235)
    tint = rng.normal(0, 6, 3)
    return CarStyle(
        body=body,
        paint=_paint(rng),
        glass=tuple(float(v) for v in rng.uniform(25, 70) + rng.normal(0, 6, 3)),
        rim=tuple(float(v) for v in np.full(3, rng.uniform(110, 210))),
        belt=belt,
        roof=roof,
        clearance=rng.uniform(0.045, 0.07) + (0.02 if body == "suv" else 0.0),
        wheel_r=rng.uniform(0.07, 0.085) + (0.008 if body == "suv" else 0.0),
        cabin=(a1, a2, a3, a4),
        width=rng.uniform(0.4, 0.45),
        wall=tuple(float(v) for v in np.clip(wall_v + tint, 0, 255)),
        floor=tuple(float(v) for v in np.clip(wall_v * rng.uniform(0.55, 0.85) + tint, 0, 255)),
    )


class _Canvas:
    """An image, its car mask, and a transform from car coordinates to pixels."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.image = np.zeros((h, w, 3), np.float32)
        self.mask = np.zeros((h, w), np.uint8)

    def fill(self, pts: np.ndarray, color: tuple[float, ...], *, in_mask: bool = True,
             shade: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        layer = np.zeros((self.h, self.w), np.uint8)
        cv2.fillPoly(layer, [np.round(pts).astype(np.int32)], 1)
        sel = layer.astype(bool)
        if not sel.any():
            return
        col = np.asarray(color, np.float32)
        if shade is None:
            self.image[sel] = col
        else:
            ys = np.nonzero(sel)[0]
            self.image[sel] = col[None, :] * shade(ys)[:, None]
        if in_mask:
            self.mask[sel] = 1

    def circle(self, c: tuple[float, float], r: float, color: tuple[float, ...],
               *, in_mask: bool = True) -> None:
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        self.fill(np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], 1), color,
                  in_mask=in_mask)

    def ellipse(self, c: tuple[float, float], rx: float, ry: float, color: tuple[float, ...],
                *, in_mask: bool = True) -> None:
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        self.fill(np.stack([c[0] + rx * np.cos(t), c[1] + ry * np.sin(t)], 1), color,
                  in_mask=in_mask)


def _shade(top: float, bottom: float, lo: float = 0.55, hi: float = 1.15):
    """Light from above: brighter at the top of a panel, darker towards the sills."""
    span = max(bottom - top, 1.0)

    def f(ys: np.ndarray) -> np.ndarray:
        return hi - (hi - lo) * np.clip((ys - top) / span, 0, 1)

    return f


def _background(cv: _Canvas, style: CarStyle, horizon: float, rng: np.random.Generator) -> None:
    h, w = cv.h, cv.w
    y = np.arange(h, dtype=np.float32)[:, None, None]
    wall = np.asarray(style.wall, np.float32) * (0.88 + 0.12 * y / max(horizon, 1))
    floor = np.asarray(style.floor, np.float32) * (0.85 + 0.2 * (y - horizon) / max(h - horizon, 1))
    img = np.where(y < horizon, wall, floor)
    img = np.broadcast_to(img, (h, w, 3)).copy()
    # soft studio lights on the wall
    x = np.arange(w, dtype=np.float32)[None, :, None]
    for _ in range(int(rng.integers(1, 4))):
        cx, sx = rng.uniform(0, w), rng.uniform(0.05, 0.2) * w
        img[: int(horizon)] *= 1 + 0.12 * np.exp(-0.5 * ((x - cx) / sx) ** 2)
    cv.image[:] = img


def _wheel(cv: _Canvas, c: tuple[float, float], r: float, style: CarStyle, sx: float) -> None:
    """A tyre with rim and spokes, seen from the side (sx < 1 squeezes it horizontally)."""
    cv.ellipse(c, r * sx, r, (22, 22, 24))
    cv.ellipse(c, 0.62 * r * sx, 0.62 * r, style.rim)
    cv.ellipse(c, 0.2 * r * sx, 0.2 * r, tuple(v * 0.6 for v in style.rim))
    for k in range(5):
        a = 2 * math.pi * k / 5
        p = (c[0] + 0.58 * r * sx * math.cos(a), c[1] + 0.58 * r * math.sin(a))
        cv2.line(cv.image, (round(c[0]), round(c[1])), (round(p[0]), round(p[1])),
                 tuple(v * 0.55 for v in style.rim), max(1, round(0.08 * r)))


def _side(cv: _Canvas, style: CarStyle, x0: float, ground: float, length: float,
          squeeze: float, facing_left: bool) -> None:
    """The side profile of the car, length `length` px before foreshortening by `squeeze`."""
    s = style
    L = length

    def P(pts: list[tuple[float, float]]) -> np.ndarray:
        a = np.asarray(pts, np.float32)
        xs = a[:, 0] if facing_left else 1 - a[:, 0]
        return np.stack([x0 + xs * L * squeeze, ground - a[:, 1] * L], 1)

    c, b = s.clearance, s.belt
    a1, a2, a3, a4 = s.cabin
    body = [(0.0, c + 0.035), (0.005, c + 0.1), (0.03, b - 0.025), (0.09, b - 0.005),
            (a1, b), (0.9, b + 0.008), (0.975, b - 0.02), (0.995, c + 0.11),
            (1.0, c + 0.04), (0.975, c), (0.03, c)]
    cabin = [(a1 - 0.01, b), (a2, b + s.roof), (a3, b + s.roof - 0.005),
             (a4, b + 0.005), (a4 + 0.01, b)]
    top, bottom = ground - (b + s.roof) * L, ground - c * L
    paint_shade = _shade(top, bottom)
    cv.fill(P(body), s.paint, shade=paint_shade)
    cv.fill(P(cabin), s.paint, shade=paint_shade)
    # windows: the cabin inset, split by a B-pillar
    inset = 0.018
    mid = (a2 + a3) / 2
    front_win = [(a1 + 0.03, b + inset), (a2 + 0.01, b + s.roof - inset),
                 (mid - 0.012, b + s.roof - inset), (mid - 0.012, b + inset)]
    back_win = [(mid + 0.012, b + inset), (mid + 0.012, b + s.roof - inset),
                (a3 - 0.005, b + s.roof - inset), (a4 - 0.025, b + inset)]
    glass_shade = _shade(top, ground - b * L, 0.8, 1.35)
    cv.fill(P(front_win), s.glass, shade=glass_shade)
    cv.fill(P(back_win), s.glass, shade=glass_shade)
    # wheel arches, then wheels (part of the car, as in Carvana's masks)
    r = s.wheel_r
    for wx in (0.18, 0.81):
        cv.fill(P([(wx + r * 1.2 * math.cos(t), c + 0.01 + r * 1.2 * math.sin(t))
                   for t in np.linspace(0, math.pi, 16)]), tuple(v * 0.12 for v in s.paint))
        cx, cy = P([(wx, r)])[0]
        _wheel(cv, (float(cx), float(cy)), r * L, s, squeeze)
    # details that shading alone would not give: door seams, handles, lights
    for dx in (a1 + 0.06, mid, a3 - 0.02):
        p = P([(dx, b - 0.005), (dx, c + 0.03)])
        cv2.line(cv.image, tuple(np.round(p[0]).astype(int)), tuple(np.round(p[1]).astype(int)),
                 tuple(v * 0.45 for v in s.paint), 1)
    cv.fill(P([(0.006, b - 0.06), (0.05, b - 0.045), (0.05, b - 0.075), (0.008, b - 0.085)]),
            (220, 235, 245))
    cv.fill(P([(0.99, b - 0.05), (0.965, b - 0.04), (0.965, b - 0.075), (0.993, b - 0.08)]),
            (30, 30, 190))
    belt = P([(0.05, b - 0.03), (0.95, b - 0.025)])
    cv2.line(cv.image, tuple(np.round(belt[0]).astype(int)), tuple(np.round(belt[1]).astype(int)),
             tuple(min(255.0, v * 1.5 + 40) for v in s.paint), max(1, round(0.006 * L)))


def _face(cv: _Canvas, style: CarStyle, x0: float, ground: float, length: float, squeeze: float,
          front: bool) -> None:
    """The front or back of the car, `squeeze` = how much of its width faces the camera."""
    s = style
    W = s.width * length * squeeze

    def P(pts: list[tuple[float, float]]) -> np.ndarray:
        a = np.asarray(pts, np.float32)
        return np.stack([x0 + a[:, 0] * W, ground - a[:, 1] * length], 1)

    c, b = s.clearance, s.belt
    top, bottom = ground - (b + s.roof) * length, ground - c * length
    sh = _shade(top, bottom, 0.5, 1.1)
    for tx in (0.04, 0.8):  # tyres under the body
        cv.fill(P([(tx, 0.0), (tx + 0.16, 0.0), (tx + 0.16, c + 0.05), (tx, c + 0.05)]),
                (22, 22, 24))
    cv.fill(P([(0.0, c + 0.02), (0.0, b - 0.02), (0.04, b), (0.96, b), (1.0, b - 0.02),
               (1.0, c + 0.02), (0.95, c), (0.05, c)]), s.paint, shade=sh)
    cv.fill(P([(0.06, b), (0.16, b + s.roof), (0.84, b + s.roof), (0.94, b)]), s.paint, shade=sh)
    cv.fill(P([(0.1, b + 0.01), (0.19, b + s.roof - 0.015), (0.81, b + s.roof - 0.015),
               (0.9, b + 0.01)]), s.glass, shade=_shade(top, ground - b * length, 0.8, 1.3))
    lamp = (225, 235, 245) if front else (30, 30, 200)
    for lx in (0.05, 0.77):
        cv.fill(P([(lx, b - 0.08), (lx + 0.18, b - 0.08), (lx + 0.18, b - 0.045),
                   (lx, b - 0.045)]), lamp)
    if front:
        cv.fill(P([(0.3, c + 0.05), (0.7, c + 0.05), (0.7, b - 0.05), (0.3, b - 0.05)]),
                (35, 35, 38))
    else:
        cv.fill(P([(0.35, c + 0.06), (0.65, c + 0.06), (0.65, c + 0.1), (0.35, c + 0.1)]),
                (200, 200, 205))


def render(seed: int, car: int, view: int, num_views: int, size: tuple[int, int]
           ) -> tuple[np.ndarray, np.ndarray]:
    """One photo (HxWx3 BGR uint8) and its mask (HxW uint8 in {0,1})."""
    h, w = size
    style = car_style(np.random.default_rng([seed, car]))
    rng = np.random.default_rng([seed, car, view])
    cv = _Canvas(h, w)
    horizon = h * rng.uniform(0.42, 0.6)
    _background(cv, style, horizon, rng)

    theta = 2 * math.pi * view / num_views + rng.uniform(-0.12, 0.12)
    side_sq = abs(math.sin(theta))
    face_sq = abs(math.cos(theta))
    length = w * rng.uniform(0.58, 0.8)
    height_px = (style.belt + style.roof) * length
    length = min(length, (h * 0.7) / (style.belt + style.roof))
    height_px = (style.belt + style.roof) * length
    projected = length * side_sq + style.width * length * face_sq
    if projected > 0.95 * w:  # keep the car inside the frame
        length *= 0.95 * w / projected
        projected = 0.95 * w
        height_px = (style.belt + style.roof) * length
    ground = rng.uniform(max(horizon + 0.1 * h, height_px + 0.05 * h), 0.95 * h)
    x0 = (w - projected) / 2 + rng.uniform(-0.5, 0.5) * (w - projected) * 0.8
    facing_left = math.sin(theta) >= 0
    front = math.cos(theta) >= 0

    # soft shadow on the floor (not part of the car)
    shadow = np.zeros((h, w), np.float32)
    cv2.ellipse(shadow, (round(x0 + projected / 2), round(ground)),
                (max(1, round(projected * 0.55)), max(1, round(0.035 * length + 4))),
                0, 0, 360, 1.0, -1)
    k = max(3, int(0.03 * w) | 1)
    shadow = cv2.GaussianBlur(shadow, (k, k), 0)
    cv.image *= (1 - 0.55 * shadow)[..., None]

    face_w = style.width * length * face_sq
    side_w = length * side_sq
    if side_sq > 0.05:
        sx = x0 + (face_w if (facing_left == front) else 0.0)
        _side(cv, style, sx, ground, length, side_sq, facing_left)
    if face_sq > 0.05:
        fx = x0 if (facing_left == front) else x0 + side_w
        _face(cv, style, fx, ground, length, face_sq, front)

    img = cv2.GaussianBlur(cv.image, (0, 0), 0.7)  # lens softness
    img += rng.normal(0, rng.uniform(1.5, 5.0), img.shape).astype(np.float32)
    img *= rng.uniform(0.85, 1.1)  # exposure
    return np.clip(img, 0, 255).astype(np.uint8), cv.mask


def car_id(seed: int, car: int) -> str:
    """A 12-hex-digit id, like Carvana's, fixed by (seed, car)."""
    return np.random.default_rng([seed, car, 1 << 20]).bytes(6).hex()


def write_dataset(out: Path, num: int, size: tuple[int, int] = (640, 960), seed: int = 0,
                  views: int = 8, progress: Callable[[int, int], None] | None = None
                  ) -> list[Path]:
    """Write `num` photos and their masks under `out` in Carvana's layout; returns the photos."""
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    if views < 1:
        raise ValueError(f"--views must be at least 1, got {views}")
    img_dir, mask_dir = out / IMAGE_DIR, out / MASK_DIR
    try:
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"{out}: cannot create the data set folder: {e.strerror}") from e
    written = []
    for i in range(num):
        car, view = divmod(i, views)
        image, mask = render(seed, car, view, views, size)
        name = f"{car_id(seed, car)}_{view + 1:02d}"
        ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError(f"{name}.jpg: JPEG encoding failed")
        write_atomic(img_dir / f"{name}.jpg", jpg.tobytes())
        buf = BytesIO()
        Image.fromarray(mask * 255, mode="L").save(buf, format="GIF")
        write_atomic(mask_dir / f"{name}{MASK_SUFFIX}", buf.getvalue())
        written.append(img_dir / f"{name}.jpg")
        if progress is not None:
            progress(i + 1, num)
    return written
