"""The refinement reference (carseg.runtime.refine): its box filter against a plain windowed
mean, and a refined mask that follows the photo's edge where the coarse one cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from carseg.runtime.refine import RefineSpec, box, guided_coefficients, refine


@pytest.mark.parametrize("r", [0, 1, 3, 9])
def test_box_is_the_mean_over_the_window_clipped_at_the_border(r: int) -> None:
    x = torch.rand(2, 7, 11, generator=torch.Generator().manual_seed(r))
    want = torch.empty_like(x)
    for i in range(7):
        for j in range(11):
            want[:, i, j] = x[:, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean((1, 2))
    assert torch.allclose(box(x, r), want, atol=1e-6)


def test_a_constant_input_stays_constant() -> None:
    guide = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1))
    a, b = guided_coefficients(guide, torch.full((20, 30), 0.3), 4, 1e-4)
    assert a.abs().max() < 1e-4
    assert torch.allclose((a * guide).sum(0) + b, torch.full((20, 30), 0.3), atol=1e-4)


def _photo_with_a_car(h: int = 480, w: int = 720) -> tuple[torch.Tensor, np.ndarray]:
    """A textured grey wall, and a red 'car' (an ellipse) whose true mask is known."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    car = ((yy - h * 0.55) / (h * 0.3)) ** 2 + ((xx - w * 0.5) / (w * 0.35)) ** 2 <= 1
    rgb = np.full((h, w, 3), 200, np.float64) + rng.normal(0, 6, (h, w, 3))
    rgb[car] = [170, 30, 40] + rng.normal(0, 6, (int(car.sum()), 3))
    return torch.from_numpy(np.clip(rgb, 0, 255).astype(np.uint8)), car


def _coarse_logits(car: np.ndarray, size: int = 32) -> torch.Tensor:
    """What a model at a small input size gives: the true mask, area-averaged to `size` px
    wide, as confident logits."""
    m = torch.from_numpy(car.astype(np.float32))[None, None]
    h, w = car.shape
    p = F.interpolate(m, size=(round(h * size / w), size), mode="area")[0, 0]
    return torch.logit(p.clamp(0.02, 0.98))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_the_refined_mask_follows_the_photos_edge() -> None:
    rgb, car = _photo_with_a_car()
    logits = _coarse_logits(car)
    coarse = torch.sigmoid(F.interpolate(logits[None, None], size=car.shape, mode="bilinear",
                                         align_corners=False)[0, 0]).numpy() > 0.5
    alpha = refine(rgb, logits, radius=32, subsample=4)
    assert alpha.shape == car.shape and alpha.dtype == torch.float32
    refined = alpha.numpy() > 0.5
    wrong_coarse, wrong_refined = int((coarse != car).sum()), int((refined != car).sum())
    assert wrong_refined < wrong_coarse / 3, (wrong_coarse, wrong_refined)
    assert _iou(refined, car) > 0.99


def test_far_from_the_edge_the_refinement_keeps_the_models_probability() -> None:
    """Beyond the filter's reach (two radii: the coefficients are averaged once more) nothing
    is invented: alpha is the coarse probability (0.02 / 0.98 here) within 0.05, and the mask
    is 0 outside and 1 inside."""
    rgb, car = _photo_with_a_car()
    logits = _coarse_logits(car)
    alpha = refine(rgb, logits, radius=32, subsample=4).numpy()
    coarse = torch.sigmoid(F.interpolate(logits[None, None], size=car.shape, mode="bilinear",
                                         align_corners=False)[0, 0]).numpy()
    reach = 2 * 32 + 4 + 4  # two radii, one subsampled pixel, a margin: square, not diamond
    square = np.ones((3, 3), bool)
    far = (ndimage.binary_erosion(car, square, iterations=reach)
           | ~ndimage.binary_dilation(car, square, iterations=reach))
    assert np.abs(alpha - coarse)[far].max() < 0.05
    assert (alpha[far] > 0.5).tolist() == car[far].tolist()


@pytest.mark.parametrize("kwargs, message", [
    ({"radius": 0}, "radius and subsample must be >= 1"),
    ({"subsample": 0}, "radius and subsample must be >= 1"),
    ({"eps": 0.0}, "eps > 0"),
])
def test_bad_parameters_are_named(kwargs: dict, message: str) -> None:
    rgb, car = _photo_with_a_car(48, 72)
    with pytest.raises(ValueError, match=message):
        refine(rgb, _coarse_logits(car, 8), **kwargs)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="rgb: expected uint8"):
        refine(torch.zeros(4, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="logits: expected"):
        refine(torch.zeros(4, 4, 3, dtype=torch.uint8), torch.zeros(1, 2, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"radius": 0}, r"refine.radius: expected a number in \(0, 256\], got 0"),
    ({"subsample": -1.0}, r"refine.subsample: expected a number in \(0, 64\], got -1.0"),
    ({"eps": 0.0}, r"refine.eps: expected a number in \(0, 1\], got 0.0"),
    ({"softness": 1.5}, r"refine.softness: expected a number in \(0, 1\], got 1.5"),
    ({"method": "matting"}, r"refine.method: expected guided, got 'matting'"),
])
def test_bad_specs_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RefineSpec(**kwargs)


def test_the_grid_scales_with_the_photo_not_in_pixels() -> None:
    """The window is the same share of the photo at any size: 4 model pixels."""
    spec = RefineSpec()
    assert spec.grid(1280, 1918, 128) == ((85, 128), 4)  # 60 px radius, 15 px cells
    assert spec.grid(160, 240, 64) == ((43, 64), 4)      # 15 px radius, 3.75 px cells
    assert spec.grid(40, 60, 64) == ((40, 60), 4)        # finer than the photo: 1 px cells
    assert RefineSpec(subsample=0.5).grid(1280, 1918, 128) == ((171, 256), 8)
    assert RefineSpec.from_json(spec.to_json()) == spec
