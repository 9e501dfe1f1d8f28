"""The preprocessing contract, written once, implemented with torch ops.

Training applies it with albumentations (carseg.train.transforms); inference applies it here with
tensor operations, on whatever device the pixels are on, and libcarseg applies the same
operations in C++. The rules:

1. Longest side to `size`: scale = size / max(h, w); the new sides are round(h * scale) and
   round(w * scale) (at least 1), resized bilinearly with half-pixel centres and no
   antialiasing (cv2.INTER_LINEAR == torch bilinear, align_corners=False).
2. Pad bottom and right to size x size with pixel value `pad_value` (0: black).
3. Normalize: (pixel / max_pixel_value - mean) / std per RGB channel.

Post-processing undoes it: crop the logits to the resized region, resize them bilinearly to
the photo's own height and width, then sigmoid and threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SIZE = 8192  # libcarseg refuses a larger preprocessing.size too


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_pixel_value: float = 255.0
    pad_value: int = 0
    pad_position: str = "bottom_right"
    interpolation: str = "bilinear"
    antialias: bool = False
    channel_order: str = "RGB"
    layout: str = "NCHW"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Values may come from an untrusted manifest: each is checked for type and range, and a
        # message repeats at most a few dozen characters of it.
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise ValueError(f"size: expected an integer, got {self.size!r:.60}")
        if self.size < 32 or self.size % 32 or self.size > MAX_SIZE:
            raise ValueError(f"image size must be a positive multiple of 32 up to {MAX_SIZE}, "
                             f"got {self.size}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if not isinstance(v, tuple) or len(v) != 3 or not all(_finite(x) for x in v):
                raise ValueError(f"{name}: expected 3 finite numbers (RGB), got {v!r:.60}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if not _finite(self.max_pixel_value) or not 0 < self.max_pixel_value <= 65535:
            raise ValueError(f"max_pixel_value: expected a number in (0, 65535], got "
                             f"{self.max_pixel_value!r:.60}")
        if not _finite(self.pad_value) or not 0 <= self.pad_value <= 65535:
            raise ValueError(f"pad_value: expected a number in [0, 65535], got "
                             f"{self.pad_value!r:.60}")

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """(h', w') after fitting the longest side to `size`."""
        if h < 1 or w < 1:
            raise ValueError(f"image must be at least 1x1, got {w}x{h}")
        scale = self.size / max(h, w)
        return (min(self.size, max(1, round(h * scale))),
                min(self.size, max(1, round(w * scale))))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PreprocessSpec:
        if not isinstance(d, dict):
            raise ValueError(f"expected an object, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"preprocessing: unknown field(s) {bounded_names(unknown)}")
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                if not isinstance(d[k], list) or len(d[k]) != 3:
                    raise ValueError(f"{k}: expected 3 numbers (RGB), got {d[k]!r:.60}")
                d[k] = tuple(d[k])
        return cls(**d)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def bounded_names(names: list[str], most: int = 5) -> str:
    """A bounded list of names for a message: the first few, each cut short, and the count."""
    shown = [n if len(n) <= 40 else n[:40] + "..." for n in names[:most]]
    return str(shown) + (f" and {len(names) - most} more" if len(names) > most else "")


def _check_image(image: torch.Tensor) -> None:
    if image.dtype != torch.uint8:
        raise ValueError(f"image: expected dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected shape [H, W, 3], got {list(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image: expected a non-empty image, got {list(image.shape)}")


def preprocess(image: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 [H,W,3] RGB (any device) -> float32 [3,size,size], normalized and padded."""
    _check_image(image)
    h, w = image.shape[:2]
    nh, nw = spec.resized_shape(h, w)
    x = image.permute(2, 0, 1).unsqueeze(0).float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=spec.antialias)
    x = F.pad(x, (0, spec.size - nw, 0, spec.size - nh), value=float(spec.pad_value))
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1) * spec.max_pixel_value
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1) * spec.max_pixel_value
    return ((x - mean) / std)[0]


def preprocess_batch(images: list[torch.Tensor], spec: PreprocessSpec) -> torch.Tensor:
    """Photos of any sizes -> float32 [N,3,size,size]."""
    if not images:
        raise ValueError("images: expected at least one image, got an empty list")
    return torch.stack([preprocess(im, spec) for im in images])


def postprocess_logits(logits: torch.Tensor, original_hw: tuple[int, int],
                       spec: PreprocessSpec) -> torch.Tensor:
    """Logits [1,size,size] or [size,size] -> float32 logits [H,W] at the photo's own size."""
    if logits.ndim == 3:
        if logits.shape[0] != 1:
            raise ValueError(f"logits: expected one channel, got shape {list(logits.shape)}")
        logits = logits[0]
    if logits.ndim != 2 or tuple(logits.shape) != (spec.size, spec.size):
        raise ValueError(f"logits: expected [{spec.size}, {spec.size}], got {list(logits.shape)}")
    h, w = original_hw
    nh, nw = spec.resized_shape(h, w)
    crop = logits[:nh, :nw].float()[None, None]
    if (nh, nw) != (h, w):
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return crop[0, 0]


def mask_from_logits(logits_hw: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """float logits [H,W] -> uint8 mask [H,W] in {0,1}: sigmoid(logits) > threshold."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return (torch.sigmoid(logits_hw) > threshold).to(torch.uint8)
