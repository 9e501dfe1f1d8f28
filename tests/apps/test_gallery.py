"""carseg gallery: the picture is built from real masks and its Dice is the real Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carseg.apps.gallery import collect, dice
from carseg.cli import main
from carseg.datasets.prepare import read_csv
from carseg.errors import DataError
from carseg.io.images import read_mask, read_rgb


def test_dice() -> None:
    a = np.array([[1, 1], [0, 0]], np.uint8)
    b = np.array([[1, 0], [0, 0]], np.uint8)
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(2 / 3)


def test_gallery_from_a_masks_folder(tiny_data: Path, tmp_path: Path) -> None:
    rows = read_csv(tiny_data / "dataset_valid.csv")[:3]
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, (img, mask) in enumerate(rows):
        m = read_mask(mask)
        if i == 1:  # one prediction that misses the top half of the car
            m[: m.shape[0] // 2] = 0
        Image.fromarray(m * 255).save(masks / f"{img.stem}_mask.png")
    out = tmp_path / "g" / "gallery.png"
    assert main(["gallery", "--csv", str(tiny_data / "dataset_valid.csv"), "--masks", str(masks),
                 "--num", "3", "--out", str(out)]) == 0
    got = collect(tiny_data / "dataset_valid.csv", masks=masks, num=3)
    assert got[0].dice == 1.0 and got[2].dice == 1.0 and 0.3 < got[1].dice < 0.99
    img = read_rgb(out)
    assert img.shape[1] == 4 * 240 and img.shape[0] > 3 * 100
    page = out.with_suffix(".html").read_text()
    assert page.count("<img") == 12 and "Full-resolution Dice" in page and "240x160" in page


def test_gallery_without_masks_or_model_says_so(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no predicted mask"):
        collect(tiny_data / "dataset_valid.csv", masks=tmp_path, num=1)
