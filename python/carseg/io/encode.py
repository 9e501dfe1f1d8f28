"""Masks and cutouts as files: the one compositing rule and the encoders.

The rule, the same as libcarseg's carseg::composite (cutout.h): on white, the photo's RGB where
the mask is set and 255 elsewhere (written as JPEG, quality 95); transparent, the photo's RGB
everywhere and alpha 255 on the car, 0 elsewhere (written as PNG). Masks are PNGs of 0/255.
"""

from __future__ import annotations

import cv2
import numpy as np

BACKGROUNDS = ("white", "transparent")
CUTOUT_SUFFIX = {"white": ".jpg", "transparent": ".png"}
JPEG_QUALITY = 95
MAX_JPEG_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION, libcarseg's kMaxJpegSide


def parse_background(value: str, *, allow_none: bool = False, field: str = "background") -> str:
    """The one parser of a cutout's background: white or transparent (or none, where a caller
    may skip the cutout). Raises ValueError naming the field."""
    allowed = BACKGROUNDS + (("none",) if allow_none else ())
    if value not in allowed:
        raise ValueError(f"{field}: expected {', '.join(allowed[:-1])} or {allowed[-1]}, "
                         f"got {value!r}")
    return value


def composite(rgb: np.ndarray, mask: np.ndarray, background: str = "white") -> np.ndarray:
    """HxWx3 uint8 RGB and an HxW mask (nonzero = car) -> HxWx3 on white or HxWx4 RGBA."""
    parse_background(background)
    rgb = np.asarray(rgb)
    car = np.asarray(mask) > 0
    if rgb.shape[:2] != car.shape:
        raise ValueError(f"mask: expected shape {list(rgb.shape[:2])} (the image's), got "
                         f"{list(car.shape)}")
    if background == "white":
        return np.where(car[..., None], rgb, np.uint8(255)).astype(np.uint8)
    return np.dstack([rgb, car.astype(np.uint8) * 255])


def _encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    if not ok:
        raise RuntimeError(f"encoding a {image.shape} image as {ext} failed")
    return buf.tobytes()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """HxW {0,1} -> 8-bit PNG with values 0/255."""
    return _encode(".png", (np.asarray(mask) > 0).astype(np.uint8) * 255)


def encode_cutout(rgb: np.ndarray, mask: np.ndarray, background: str = "white"
                  ) -> tuple[bytes, str]:
    """The cutout as a file: (bytes, suffix), a JPEG on white or an RGBA PNG."""
    image = composite(rgb, mask, background)
    if background == "white":
        return _encode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]), ".jpg"
    return _encode(".png", cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)), ".png"
