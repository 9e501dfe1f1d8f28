"""Encoding masks and cutouts, and writing them so that no half-written file is ever seen."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

BACKGROUNDS = ("white", "transparent")


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
    """The car on white (JPEG) or on transparency (PNG, the mask as alpha); (bytes, suffix)."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background: expected one of {BACKGROUNDS}, got {background!r}")
    m = (np.asarray(mask) > 0)
    bgr = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)
    if background == "white":
        out = np.where(m[..., None], bgr, 255).astype(np.uint8)
        return _encode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 95]), ".jpg"
    bgra = np.dstack([bgr, m.astype(np.uint8) * 255])
    return _encode(".png", bgra), ".png"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name in the same folder, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
