"""Masks and cutouts as files: the compositing rules, the backdrops and the encoders.

The hard rule, the same as libcarseg's carseg::composite (cutout.h): on white, the photo's RGB
where the mask is set and 255 elsewhere (written as JPEG, quality 95); transparent, the photo's
RGB everywhere and alpha 255 on the car, 0 elsewhere (written as PNG). Masks are PNGs of 0/255.
With refinement the cutout is composited from the alpha matte instead
(carseg.runtime.refine.composite_soft, libcarseg's composite_matte) over a Backdrop: white, a
colour, an image, or nothing (transparent).
"""

from __future__ import annotations

import cv2
import numpy as np

BACKGROUNDS = ("white", "transparent")
CUTOUT_SUFFIX = {"white": ".jpg", "transparent": ".png"}
JPEG_QUALITY = 95
MAX_JPEG_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION, libcarseg's kMaxJpegSide


def parse_background(value: str, *, allow_none: bool = False, field: str = "background") -> str:
    """The one parser of a cutout's background: white, transparent, #RRGGBB or an image file's
    path (or none, where a caller may skip the cutout). Returns it; raises ValueError naming
    the field."""
    if value in BACKGROUNDS or (allow_none and value == "none"):
        return value
    if value.startswith("#"):
        Backdrop.parse(value, field=field)
        return value
    from pathlib import Path

    if not value or not Path(value).is_file():
        choices = "white, transparent, #RRGGBB or an image file" + (", or none" if allow_none
                                                                      else "")
        raise ValueError(f"{field}: expected {choices}, got {value[:200]!r} (no such file)")
    return value


def jpeg_cutout_refusal(width: int, height: int, use_png: str) -> str | None:
    """Why a width x height cutout cannot be a JPEG (a side over MAX_JPEG_SIDE), or None when
    it can; `use_png` is how the caller's user asks for a PNG instead."""
    if max(width, height) <= MAX_JPEG_SIDE:
        return None
    return (f"is {width}x{height}: too large for a JPEG cutout (JPEG's sides are at most "
            f"{MAX_JPEG_SIDE} pixels); use {use_png} (PNG)")


def cutout_suffix(background: str) -> str:
    """.png for a transparent cutout, .jpg for any other."""
    return ".png" if background == "transparent" else ".jpg"


class Backdrop:
    """What is behind the car in a cutout (libcarseg's carseg::Backdrop): a colour, an image
    (resized to each photo), or nothing (transparent)."""

    def __init__(self, colour: tuple[int, int, int] | None = (255, 255, 255),
                 image: np.ndarray | None = None) -> None:
        self.colour, self.image = colour, image
        self._sized: dict[tuple[int, int], np.ndarray] = {}

    @property
    def transparent(self) -> bool:
        return self.colour is None and self.image is None

    @classmethod
    def parse(cls, value: str, field: str = "background") -> Backdrop:
        if value == "white":
            return cls()
        if value == "transparent":
            return cls(None, None)
        if value.startswith("#"):
            if len(value) != 7 or any(c not in "0123456789abcdefABCDEF" for c in value[1:]):
                raise ValueError(f"{field}: expected a colour as #RRGGBB (six hex digits), got "
                                 f"{value[:40]!r}")
            rgb = tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
            return cls(rgb, None)  # type: ignore[arg-type]
        from pathlib import Path

        from carseg.io.images import read_rgb

        if not value or not Path(value).exists():
            raise ValueError(f"{field}: expected white, transparent, #RRGGBB or an image file, "
                             f"got {value[:200]!r} (no such file)")
        try:
            image = read_rgb(value)
        except (OSError, ValueError) as e:
            raise ValueError(f"{field}: cannot use it as a backdrop image: {e}") from None
        return cls(None, image)

    def pixels(self, h: int, w: int) -> np.ndarray | None:
        """The backdrop as uint8 [h, w, 3] (an image resized bilinearly, align_corners false,
        rounded half up, as libcarseg), or None for a colour or transparent."""
        if self.image is None:
            return None
        if (h, w) not in self._sized:
            import torch
            import torch.nn.functional as F

            src = torch.from_numpy(self.image).permute(2, 0, 1)[None].float()
            out = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False)
            self._sized = {(h, w): out.add_(0.5).clamp_(0, 255).to(torch.uint8)[0]
                           .permute(1, 2, 0).contiguous().numpy()}
        return self._sized[(h, w)]

    def behind(self, h: int, w: int) -> np.ndarray | None:
        """What a predictor composites over: uint8 [3] (a colour) or [h, w, 3], None for
        transparent."""
        if self.transparent:
            return None
        back = self.pixels(h, w)
        return back if back is not None else np.asarray(self.colour, np.uint8)


def crop_box(alpha: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the car's box in an alpha matte (alpha > 0) grown by `margin` pixels a
    side and clipped to the photo; the whole photo where the matte is empty (libcarseg's
    crop_box)."""
    h, w = alpha.shape[:2]
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return 0, 0, w, h
    margin = max(0, int(margin))
    return (max(0, int(cols[0]) - margin), max(0, int(rows[0]) - margin),
            min(w, int(cols[-1]) + 1 + margin), min(h, int(rows[-1]) + 1 + margin))


def encode_image(image: np.ndarray, quality: int = JPEG_QUALITY) -> tuple[bytes, str]:
    """A composited cutout as a file: (bytes, suffix): RGB as JPEG of `quality`, RGBA as PNG."""
    if not 1 <= quality <= 100:
        raise ValueError(f"quality: expected 1 to 100, got {quality}")
    if image.ndim == 3 and image.shape[2] == 4:
        return _encode(".png", cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)), ".png"
    return _encode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                   [cv2.IMWRITE_JPEG_QUALITY, int(quality)]), ".jpg"


def encode_alpha_png(alpha: np.ndarray) -> bytes:
    """An alpha matte (uint8 0..255) as a grey PNG."""
    return _encode(".png", np.ascontiguousarray(alpha, dtype=np.uint8))


def composite(rgb: np.ndarray, mask: np.ndarray, background: str = "white") -> np.ndarray:
    """HxWx3 uint8 RGB and an HxW mask (nonzero = car) -> HxWx3 on white or HxWx4 RGBA."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background: expected white or transparent, got {background!r:.60}")
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
