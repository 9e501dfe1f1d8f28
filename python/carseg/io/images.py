"""Reading photos and masks with errors that name the file and what is wrong.

Photos of any common mode (grayscale, palette, RGBA, CMYK, 16-bit) come back as HxWx3 uint8
RGB; masks come back as HxW uint8 in {0, 1}. Images are untrusted bytes: only JPEG, PNG, GIF
and BMP are decoded (what libcarseg decodes), a file must be a regular file of at most
MAX_FILE_BYTES, an image at most MAX_PIXELS, a JPEG at most MAX_JPEG_SCANS scans, and whatever
a decoder raises becomes a DataError naming the file. Nothing is silently replaced.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from carseg.errors import DataError

MAX_PIXELS = 80_000_000  # libcarseg's kDefaultMaxPixels: far beyond any photo, far below OOM
MAX_FILE_BYTES = 256 * 2**20  # libcarseg's kMaxFileBytes: an 80 MP photo is far smaller
# libcarseg's kMaxJpegScans. A progressive JPEG has about 10 scans; a crafted one can hold
# thousands, and each costs a pass over the whole image (seconds of decoding for a small file).
MAX_JPEG_SCANS = 100
FORMATS = ("JPEG", "PNG", "GIF", "BMP")  # what Pillow may open: the formats libcarseg decodes


# The formats carseg decodes, by their first bytes (as libcarseg sniffs them).
SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
              (b"GIF8", "image/gif"), (b"BM", "image/bmp"))


def sniff_format(data: bytes) -> str | None:
    """The media type the bytes say they are (JPEG, PNG, GIF or BMP), or None."""
    return next((kind for sig, kind in SIGNATURES if data.startswith(sig)), None)


class ImageTooLarge(DataError):
    """An image past MAX_PIXELS (a server answers 413 to it)."""


def read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A photo file's bytes: a regular file (a FIFO or a device would block or never end) of at
    most `limit` bytes, opened without blocking and checked on the open descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise DataError(f"{path}: is a folder, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file (a pipe, device or socket)")
        if st.st_size > limit:
            raise DataError(f"{path}: file of {st.st_size} bytes is over the limit of {limit}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{path}: file is over the limit of {limit} bytes")
    if not data:
        raise DataError(f"{path}: empty file")
    return data


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """Start-of-scan segments in a JPEG (counting stops past `stop_after`), found by walking
    its segments: entropy-coded data is skipped to the next marker, and since a 0xFF byte in
    it is always followed by 0x00 or a restart marker, no marker hides there."""
    scans, i, size = 0, 2, len(data)
    while i + 4 <= size and scans <= stop_after:
        if data[i] != 0xFF:  # not at a marker: resynchronize at the next 0xFF
            i = data.find(b"\xff", i)
            if i < 0:
                break
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
        if marker != 0xDA:
            continue
        scans += 1
        while 0 <= i < size - 1:  # the scan's entropy-coded data, to the next marker
            i = data.find(b"\xff", i)
            if i < 0 or (data[i + 1] != 0 and not 0xD0 <= data[i + 1] <= 0xD7):
                break
            i += 2
        if i < 0:
            break
    return scans


@contextlib.contextmanager
def _decoder_errors(name: str | Path, data: bytes) -> Iterator[None]:
    """What Pillow raises on `data`, as carseg errors naming the file: ImageTooLarge where it
    refuses the size, DataError for anything else (hostile bytes raise all sorts)."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{name}: image too large (limit {MAX_PIXELS} pixels)") from None
    except UnidentifiedImageError:
        raise DataError(_unidentified(name, data)) from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - what a decoder raises on hostile bytes varies
        reason = str(e).splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"{name}: corrupt or truncated image ({reason})") from None


def _open(name: Path, data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `data` (named `name` in messages): any failure is a DataError."""
    if not data:
        raise DataError(f"{name}: empty file")
    if data.startswith(b"\xff\xd8\xff") and (n := jpeg_scans(data)) > MAX_JPEG_SCANS:
        raise DataError(f"{name}: JPEG with over {MAX_JPEG_SCANS} scans (found {n}); refused "
                        f"as too costly to decode")
    with _decoder_errors(name, data), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(BytesIO(data), formats=FORMATS)
        if img.width * img.height > max_pixels:
            raise ImageTooLarge(f"{name}: image too large ({img.width}x{img.height}, "
                                f"limit {max_pixels} pixels)")
        img.load()
    return img


def _unidentified(name: str | Path, data: bytes) -> str:
    """The error for bytes Pillow cannot open: corrupt where they carry a signature carseg
    decodes (a PNG with a bad header checksum), else not an image carseg reads."""
    kind = sniff_format(data)
    if kind is not None:
        return (f"{name}: corrupt or truncated image (a {kind.removeprefix('image/').upper()} "
                f"whose header cannot be read)")
    return f"{name}: not a readable image: not a JPEG, PNG, GIF or BMP"


def _header(name: str | Path, data: bytes) -> tuple[int, int]:
    """(width, height) from the header of encoded `data`; nothing decoded, any failure a
    DataError (ImageTooLarge where Pillow refuses the size outright)."""
    if not data:
        raise DataError(f"{name}: empty file")
    with _decoder_errors(name, data), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # callers check
        with Image.open(BytesIO(data), formats=FORMATS) as img:
            return img.size


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    path = Path(path)
    return _header(path, read_bytes(path))


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
    return np.ascontiguousarray(to_rgb(_open(path, read_bytes(path))))


def decode_rgb(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, BMP or GIF) held in memory to HxWx3 uint8 RGB."""
    return np.ascontiguousarray(to_rgb(_open(Path(name), data, max_pixels)))


def image_header(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """(width, height) of an encoded image held in memory, from its header alone."""
    return _header(name, data)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask (Carvana GIF, PNG, ...) as HxW uint8 with values {0, 1}.

    Carvana's GIFs store 0/1 palette indices; other tools write 0/255. Both are accepted:
    a mask whose largest value is 1 is taken as is, otherwise values above 127 are the car.
    """
    path = Path(path)
    img = _open(path, read_bytes(path))
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
