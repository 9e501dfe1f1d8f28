"""The training's car/studio tone augmentation, its crop, and the CPU engine's bfloat16 choice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from carseg.train.engines import cpu_has_native_bf16, cpu_mixed_precision
from carseg.train.transforms import CarAndStudioTone, build_transforms


def _photo() -> tuple[np.ndarray, np.ndarray]:
    """A grey car (value 100) in a grey studio (value 180), 64x96, car in rows 20-43."""
    img = np.full((64, 96, 3), 180, np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    img[20:44, 10:86] = 100
    mask[20:44, 10:86] = 1
    return img, mask


def test_tone_gives_car_and_studio_their_own_curve() -> None:
    img, mask = _photo()
    t = CarAndStudioTone(gamma_limit=(0.5, 0.5), p=1.0)  # both curves gamma 0.5
    out = t(image=img, mask=mask)
    assert np.array_equal(out["mask"], mask)
    car = round(255 * (100 / 255) ** 0.5)
    studio = round(255 * (180 / 255) ** 0.5)
    assert np.all(out["image"][22:42, 12:84] == car)
    assert np.all(out["image"][:18] == studio) and np.all(out["image"][46:] == studio)
    # the edge blends the two, it does not jump past either
    edge = out["image"][19:21, 40, 0]
    assert np.all((edge >= min(car, studio)) & (edge <= max(car, studio)))


def test_tone_draws_independent_curves_for_car_and_studio() -> None:
    img, mask = _photo()
    t = CarAndStudioTone(gamma_limit=(0.4, 2.0), p=1.0)
    contrasts = set()
    for seed in range(20):
        t.set_random_seed(seed)
        out = t(image=img, mask=mask)["image"].astype(int)
        contrasts.add(int(out[30, 40, 0]) - int(out[5, 5, 0]))
    # a darker car, a brighter one, and about the studio's own tone all occur
    assert min(contrasts) < -40 and max(contrasts) > 0 and len(contrasts) > 10


def test_tone_is_off_unless_asked_and_refuses_bad_settings() -> None:
    names = [type(t).__name__ for t in build_transforms("train", 64).transforms]
    assert "CarAndStudioTone" not in names
    names = [type(t).__name__ for t in build_transforms("train", 64, tone_p=0.5).transforms]
    assert "CarAndStudioTone" in names
    assert "CarAndStudioTone" not in [type(t).__name__ for t in
                                      build_transforms("valid", 64, tone_p=0.5).transforms]
    with pytest.raises(ValueError, match="tone_p"):
        build_transforms("train", 64, tone_p=1.5)
    with pytest.raises(ValueError, match="gamma_limit"):
        CarAndStudioTone(gamma_limit=(2.0, 1.0))


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n"
                 f"processor\t: 1\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return p


@pytest.mark.parametrize("flags,expected", [
    ("avx512f avx512bw avx512_bf16", "bf16"),   # AMD Zen 4, Intel Cooper Lake
    ("avx512f amx_bf16 amx_tile", "bf16"),      # Intel Sapphire Rapids
    ("avx512f avx512bw avx512_vnni", "no"),     # AVX-512 without bfloat16: emulated, slower
    ("", "no"),
])
def test_auto_takes_bf16_only_where_the_cpu_computes_it(tmp_path: Path, flags: str,
                                                        expected: str) -> None:
    info = _cpuinfo(tmp_path, flags)
    assert cpu_has_native_bf16(info) is (expected == "bf16")
    assert cpu_mixed_precision("auto", info) == expected
    assert cpu_mixed_precision("no", info) == "no"
    assert cpu_mixed_precision("bf16", info) == "bf16"


def test_cpu_precision_choices(tmp_path: Path) -> None:
    assert cpu_mixed_precision("auto", tmp_path / "missing") == "no"
    with pytest.raises(ValueError, match="cpu_mixed_precision must be one of"):
        cpu_mixed_precision("fp16")


ENGINE_CHECK = """
import sys, torch
from carseg.train.engines import auto_engine
engine = auto_engine(cpu_precision=sys.argv[1])
model = engine.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
inner = []
model[0].register_forward_hook(lambda m, i, o: inner.append(o.dtype))
out = model(torch.randn(1, 3, 8, 8))
print(engine.mixed_precision, inner[0], out.dtype)
"""


@pytest.mark.parametrize("choice,inside", [("no", "torch.float32"), ("bf16", "torch.bfloat16")])
def test_the_cpu_engine_runs_the_chosen_precision(choice: str, inside: str) -> None:
    # a process of its own: accelerate keeps one mixed precision a process
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto_engine picks the GPU here")
    out = subprocess.run([sys.executable, "-c", ENGINE_CHECK, choice], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # the convolution computes in the chosen precision; the loss gets float32 either way
    assert out.stdout.split() == [choice, inside, "torch.float32"]


def test_soft_targets_are_the_share_of_each_pixel_the_car_covers() -> None:
    img = np.zeros((100, 160, 3), np.uint8)  # at 32 px: 20x32, 5 photo pixels a model pixel
    mask = np.zeros((100, 160), np.uint8)
    mask[:, :55] = 1
    soft = build_transforms("valid", 32, soft_targets=True)(image=img, mask=mask)["mask"]
    hard = build_transforms("valid", 32)(image=img, mask=mask)["mask"]
    assert soft.dtype.is_floating_point
    row = soft[0].numpy()
    # 5 photo columns a model column: 11 full columns, then the 55th..: none covered
    assert np.allclose(row[:11], 1.0) and np.allclose(row[11:], 0.0)
    mask[:, :57] = 1                      # now 2 of the 12th column's 5 photo columns
    soft = build_transforms("valid", 32, soft_targets=True)(image=img, mask=mask)["mask"]
    assert np.isclose(float(soft[0, 11]), 0.4, atol=1e-6)
    assert np.isclose(float(soft[:20].sum()), 57 / 5 * 20, rtol=1e-5)  # the car's area kept
    assert set(np.unique(hard.numpy())) <= {0, 1}
    assert np.all(soft[20:].numpy() == 0)  # the padding is background


def test_the_training_pipeline_keeps_soft_targets_soft() -> None:
    img = np.full((96, 144, 3), 120, np.uint8)
    mask = np.zeros((96, 144), np.uint8)
    mask[30:70, 20:121] = 1
    t = build_transforms("train", 64, soft_targets=True, tone_p=1.0)
    fractional = 0
    for seed in range(5):
        t.set_random_seed(seed)
        m = t(image=img, mask=mask)["mask"].numpy()
        assert m.min() >= 0 and m.max() <= 1
        fractional += int(((m > 0.05) & (m < 0.95)).sum())
    assert fractional > 0


def test_the_training_crop_keeps_the_photo_and_drops_padding() -> None:
    # A 3:2 photo at 128 px fills rows 0..84 of the square; a crop of 96 rows keeps them all
    img = np.full((640, 960, 3), 90, np.uint8)
    mask = np.zeros((640, 960), np.uint8)
    mask[200:600, 100:860] = 1
    plain = build_transforms("train", 128, augment_strength=0.0)(image=img, mask=mask)
    crop = build_transforms("train", 128, augment_strength=0.0, train_crop=96)(image=img,
                                                                              mask=mask)
    assert tuple(plain["image"].shape) == (3, 128, 128)
    assert tuple(crop["image"].shape) == (3, 96, 128) and tuple(crop["mask"].shape) == (96, 128)
    assert torch.equal(crop["image"], plain["image"][:, :96])
    assert torch.equal(crop["mask"], plain["mask"][:96])
    assert float(plain["mask"][96:].sum()) == 0          # what the crop drops is padding
    # with the augmentations on, every sample still has the crop's shape
    t = build_transforms("train", 128, train_crop=[96, 128], soft_targets=True, tone_p=1.0)
    for seed in range(3):
        t.set_random_seed(seed)
        out = t(image=img, mask=mask)
        assert tuple(out["image"].shape) == (3, 96, 128) and tuple(out["mask"].shape) == (96, 128)
    # valid and infer pipelines never crop: inference sees the whole square
    assert tuple(build_transforms("valid", 128, train_crop=96)(image=img)["image"].shape) == (
        3, 128, 128)


@pytest.mark.parametrize("crop", [100, 160, 0, [96], [96, 64, 32]])
def test_a_training_crop_the_unet_cannot_take_is_refused(crop) -> None:
    with pytest.raises(ValueError, match="train_crop: expected H or \\[H, W\\], each a multiple "
                                         "of 32 in \\[32, 128\\]"):
        build_transforms("train", 128, train_crop=crop)


def test_image_size_override_scales_the_training_crop() -> None:
    from carseg.train.config import apply_overrides
    config = {"shared": {"image_size": 128},
              "run": [{"loaders": {"train": {"dataset": {"transforms": {
                  "image_size": 128, "train_crop": 96}}}}}]}
    for size, want in ((128, 96), (64, 64), (96, 96), (256, 192), (160, 128)):
        out = apply_overrides(config, image_size=size)
        assert out["run"][0]["loaders"]["train"]["dataset"]["transforms"]["train_crop"] == want
    config["run"][0]["loaders"]["train"]["dataset"]["transforms"]["train_crop"] = [96, 128]
    out = apply_overrides(config, image_size=512)
    assert out["run"][0]["loaders"]["train"]["dataset"]["transforms"]["train_crop"] == [384, 512]
