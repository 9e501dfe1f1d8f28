"""Albumentations pipelines for training, built from the preprocessing contract.

pre:   FitLongestSide (the contract's rule 1) + pad bottom/right (rule 2)
train: shift/scale/rotate, brightness/contrast, hue, horizontal flip (a car mirrored is
       still a car; upside down is not, so no vertical flip)
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
    """

    def __init__(self, size: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.size = size
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
        if mask.shape[:2] == out_hw:
            return mask
        return cv2.resize(mask, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size",)


def pre_transforms(image_size: int) -> list[A.BasicTransform]:
    PreprocessSpec(size=image_size)  # validates the size
    return [
        FitLongestSide(image_size),
        A.PadIfNeeded(min_height=image_size, min_width=image_size, position="top_left",
                      border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
    ]


def train_augmentations(strength: float = 1.0) -> list[A.BasicTransform]:
    s = float(strength)
    if s <= 0:
        return []
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.06 * s, 0.06 * s), scale=(1 - 0.15 * s, 1 + 0.1 * s),
                 rotate=(-8 * s, 8 * s), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
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
                     augment_strength: float = 1.0) -> A.Compose:
    """The pipeline for a stage: "train" (with augmentations) or "valid"/"infer" (without)."""
    if stage not in ("train", "valid", "infer"):
        raise ValueError(f"transforms stage: expected train|valid|infer, got {stage!r}")
    aug = train_augmentations(augment_strength) if stage == "train" else []
    return A.Compose(pre_transforms(image_size) + aug + post_transforms(mean, std))
