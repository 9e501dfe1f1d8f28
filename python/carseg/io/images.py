"""Reading photos and masks with errors that name the file and what is wrong.

Photos of any common mode (grayscale, palette, RGBA, 16-bit) come back as HxWx3 uint8 RGB;
masks come back as HxW uint8 in {0, 1}. A file that is missing, empty, truncated, not an
image, or larger than MAX_PIXELS raises; nothing is silently replaced.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from carseg.errors import DataError

MAX_PIXELS = 80_000_000  # libcarseg's kDefaultMaxPixels: far beyond any photo, far below OOM


# The formats carseg decodes, by their first bytes (as libcarseg sniffs them).
SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
              (b"GIF8", "image/gif"), (b"BM", "image/bmp"))


def sniff_format(data: bytes) -> str | None:
    """The media type the bytes say they are (JPEG, PNG, GIF or BMP), or None."""
    return next((kind for sig, kind in SIGNATURES if data.startswith(sig)), None)


class ImageTooLarge(DataError):
    """An image past MAX_PIXELS (a server answers 413 to it)."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")


def _open(path: Path, data: bytes | None = None) -> Image.Image:
    """Open and decode `path`, or `data` (named `path` in messages) when given."""
    if data is None:
        _check_file(path)
    elif not data:
        raise DataError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path if data is None else BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageTooLarge(f"{path}: image too large ({img.width}x{img.height}, "
                                f"limit {MAX_PIXELS} pixels)")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{path}: image too large (limit {MAX_PIXELS} pixels)") from None
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    except OSError as e:
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    except OSError as e:
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA on white with libcarseg's integer formula, so both agree exactly."""
    a = rgba[..., 3:4].astype(np.uint32)
    rgb = rgba[..., :3].astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB, as libcarseg decodes: 16-bit keeps the high byte
    (v >> 8, as stb does), alpha is composited on white (as a browser shows it)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.int64)
        if img.mode.startswith("I;16") or a.max() > 255:
            a = a >> 8
        a = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.round(a * (255.0 if a.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _on_white(np.asarray(img.convert("RGBA")))
    return np.asarray(img.convert("RGB"))


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a photo as HxWx3 uint8 RGB (C-contiguous)."""
    path = Path(path)
    return np.ascontiguousarray(to_rgb(_open(path)))


def decode_rgb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, BMP, GIF, ...) held in memory to HxWx3 uint8 RGB."""
    return np.ascontiguousarray(to_rgb(_open(Path(name), data)))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask (Carvana GIF, PNG, ...) as HxW uint8 with values {0, 1}.

    Carvana's GIFs store 0/1 palette indices; other tools write 0/255. Both are accepted:
    a mask whose largest value is 1 is taken as is, otherwise values above 127 are the car.
    """
    path = Path(path)
    img = _open(path)
    a = np.asarray(img.convert("L") if img.mode not in ("L", "P", "1") else img)
    if img.mode == "P":
        # palette indices: map through the palette's grey value, unless indices are 0/1
        idx = np.asarray(img)
        a = idx if idx.max() <= 1 else np.asarray(img.convert("L"))
    a = np.asarray(a)
    if a.ndim != 2:
        raise DataError(f"{path}: mask must have one channel, got shape {a.shape}")
    top = int(a.max()) if a.size else 0
    return (a > 0).astype(np.uint8) if top <= 1 else (a > 127).astype(np.uint8)
