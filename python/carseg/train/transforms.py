"""Albumentations pipelines for training, built from the preprocessing contract.

pre:   FitLongestSide (the contract's rule 1) + pad bottom/right (rule 2)
train: car and studio toned apart, shift/scale/rotate, brightness/contrast, hue, horizontal
       flip (a car mirrored is still a car; upside down is not, so no vertical flip)
post:  normalize (rule 3) + ToTensorV2
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from carseg.runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec


class FitLongestSide(A.DualTransform):
    """Resize so the longest side is `size`, rounding as PreprocessSpec.resized_shape does.

    albumentations' LongestMaxSize truncates (int(h * scale)), which can make the longest
    side size-1 through float error; the contract rounds, and C++ must agree exactly.

    `soft_mask`: the mask becomes float32, each pixel the share of its area the car covers
    (area interpolation), instead of the nearest {0,1} pixel. A model trained on those
    targets places the edge between its pixels, and its probabilities resized bilinearly to
    the photo put the edge where the photo has it: at 128 px for a 1918x1280 photo, the true
    mask itself shrunk that way and resized back scores Dice 0.996, shrunk to nearest pixels
    0.97 (benchmarks.edge_oracle).
    """

    def __init__(self, size: int, soft_mask: bool = False, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.size = size
        self.soft_mask = bool(soft_mask)
        self._spec = PreprocessSpec(size=size)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]
                                     ) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {"out_hw": self._spec.resized_shape(h, w)}

    def apply(self, img: np.ndarray, out_hw: tuple[int, int], **params: Any) -> np.ndarray:
        if img.shape[:2] == out_hw:
            return img
        return cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, out_hw: tuple[int, int], **params: Any
                      ) -> np.ndarray:
        if self.soft_mask:
            mask = mask.astype(np.float32)
            return mask if mask.shape[:2] == out_hw else cv2.resize(
                mask, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
        if mask.shape[:2] == out_hw:
            return mask
        return cv2.resize(mask, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "soft_mask")


class CarAndStudioTone(A.DualTransform):
    """A gamma curve for the car (the mask) and another for the studio around it, each drawn
    log-uniformly from `gamma_limit`, blended over a 3x3 box of the mask at the edge.

    The photo-wide brightness and contrast jitter keeps the car's tone against its studio's;
    this changes it, so that a white car before a bright wall (the hardest Carvana photos) is
    not a rare sight, and the model must find the car by its shape and edges rather than by
    being darker than the wall. The mask is unchanged.
    """

    def __init__(self, gamma_limit: tuple[float, float] = (0.4, 2.0), p: float = 0.5) -> None:
        super().__init__(p=p)
        lo, hi = gamma_limit
        if not 0 < lo <= hi:
            raise ValueError(f"gamma_limit: expected 0 < low <= high, got {gamma_limit}")
        self.gamma_limit = (float(lo), float(hi))

    @property
    def targets_as_params(self) -> list[str]:
        return ["mask"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]
                                     ) -> dict[str, Any]:
        lo, hi = np.log(self.gamma_limit)
        car, studio = np.exp(self.py_random.uniform(lo, hi)), np.exp(self.py_random.uniform(lo, hi))
        weight = cv2.blur(data["mask"].astype(np.float32), (3, 3))
        return {"car_gamma": car, "studio_gamma": studio, "weight": weight[..., None]}

    def apply(self, img: np.ndarray, car_gamma: float, studio_gamma: float, weight: np.ndarray,
              **params: Any) -> np.ndarray:
        levels = np.arange(256, dtype=np.float32) / 255
        car = (255 * levels ** car_gamma)[img]
        studio = (255 * levels ** studio_gamma)[img]
        return np.clip(studio + weight * (car - studio) + 0.5, 0, 255).astype(np.uint8)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return mask

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gamma_limit",)


def pre_transforms(image_size: int, soft_mask: bool = False) -> list[A.BasicTransform]:
    PreprocessSpec(size=image_size)  # validates the size
    return [
        FitLongestSide(image_size, soft_mask=soft_mask),
        A.PadIfNeeded(min_height=image_size, min_width=image_size, position="top_left",
                      border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
    ]


def train_augmentations(strength: float = 1.0, soft_mask: bool = False
                        ) -> list[A.BasicTransform]:
    """`soft_mask`: the mask holds coverage shares (FitLongestSide's soft_mask), so the affine
    warp interpolates it linearly instead of taking nearest pixels."""
    s = float(strength)
    if s <= 0:
        return []
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.06 * s, 0.06 * s), scale=(1 - 0.15 * s, 1 + 0.1 * s),
                 rotate=(-8 * s, 8 * s), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                 mask_interpolation=cv2.INTER_LINEAR if soft_mask else cv2.INTER_NEAREST,
                 p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=0.6),
        A.HueSaturationValue(hue_shift_limit=int(20 * s), sat_shift_limit=int(30 * s),
                             val_shift_limit=int(15 * s), p=0.5),
    ]


def post_transforms(mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> list[A.BasicTransform]:
    return [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]


def build_transforms(stage: str = "valid", image_size: int = 256,
                     mean: tuple[float, ...] = IMAGENET_MEAN,
                     std: tuple[float, ...] = IMAGENET_STD,
                     augment_strength: float = 1.0, tone_p: float = 0.0,
                     soft_targets: bool = False,
                     train_crop: int | tuple[int, int] | None = None) -> A.Compose:
    """The pipeline for a stage: "train" (with augmentations) or "valid"/"infer" (without).
    `tone_p`: the probability of CarAndStudioTone for a training photo (0: never).
    `soft_targets`: the mask shrunk to coverage shares (FitLongestSide's soft_mask) rather
    than to nearest pixels.
    `train_crop`: H or (H, W), multiples of 32: a training sample keeps only the top-left HxW
    of the padded square. Landscape photos fill the top rows (the contract pads bottom/right),
    so for Carvana's 3:2 photos the bottom third of the square is padding, which costs a
    training step as much as the car does; at 128 px a crop of 96 rows keeps every photo row
    (85 of them) and a margin for the shift/scale augmentation. The model is fully
    convolutional: inference still sees the whole square."""
    if stage not in ("train", "valid", "infer"):
        raise ValueError(f"transforms stage: expected train|valid|infer, got {stage!r}")
    if not 0.0 <= tone_p <= 1.0:
        raise ValueError(f"tone_p must be in [0, 1], got {tone_p}")
    aug: list[A.BasicTransform] = []
    if stage == "train":
        aug = ([CarAndStudioTone(p=tone_p)] if tone_p > 0 else []) + train_augmentations(
            augment_strength, soft_mask=soft_targets)
        if train_crop is not None:
            h, w = crop_shape(train_crop, image_size)
            aug.append(A.Crop(x_min=0, y_min=0, x_max=w, y_max=h))
    return A.Compose(pre_transforms(image_size, soft_mask=soft_targets) + aug
                     + post_transforms(mean, std))


def crop_shape(crop: int | tuple[int, int] | list[int], image_size: int) -> tuple[int, int]:
    """`train_crop` as (H, W): an int is a height (the width stays image_size); each side a
    multiple of 32 (the U-Net halves it five times) and at most image_size."""
    hw = (int(crop), image_size) if isinstance(crop, int) else tuple(int(v) for v in crop)
    if len(hw) != 2 or any(v <= 0 or v % 32 or v > image_size for v in hw):
        raise ValueError(f"train_crop: expected H or [H, W], each a multiple of 32 in "
                         f"[32, {image_size}], got {crop!r}")
    return hw[0], hw[1]
