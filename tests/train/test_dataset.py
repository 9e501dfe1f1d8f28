"""The training data set and transforms: dtypes, shapes, alignment, and bad files."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carseg.datasets.prepare import read_csv
from carseg.errors import DataError
from carseg.io.images import read_mask, read_rgb
from carseg.runtime.preprocess import PreprocessSpec, preprocess
from carseg.train.dataset import SegmentationDataset
from carseg.train.transforms import build_transforms


def _write_csv(path: Path, rows: list[tuple[Path, Path]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask"])
        w.writerows([(str(a), str(b)) for a, b in rows])
    return path


def test_dataset_items_have_the_right_types(tiny_data: Path) -> None:
    ds = SegmentationDataset(tiny_data / "dataset_train.csv", build_transforms("train", 96))
    item = ds[0]
    assert item["features"].dtype == torch.float32 and item["features"].shape == (3, 96, 96)
    assert item["targets"].dtype == torch.float32 and item["targets"].shape == (1, 96, 96)
    assert set(torch.unique(item["targets"]).tolist()) <= {0.0, 1.0}
    assert item["targets"].sum() > 0


def test_valid_transforms_keep_image_and_mask_aligned(tmp_path: Path) -> None:
    """A white rectangle on black whose mask is the rectangle: after resize/pad (and after
    the random affine/flip of training) the mask must still cover the bright pixels."""
    rgb = np.zeros((150, 300, 3), np.uint8)
    rgb[30:110, 60:220] = 255
    mask = (rgb[..., 0] > 0).astype(np.uint8)
    for stage in ("valid", "train"):
        t = build_transforms(stage, 128)
        for _ in range(10 if stage == "train" else 1):
            out = t(image=rgb, mask=mask)
            # normalized black is about -2; the rectangle stays far above 0 under any of the
            # brightness/contrast/hue changes of training
            bright = out["image"].mean(0) > 0
            m = torch.as_tensor(out["mask"]).bool()
            inter = (bright & m).sum().item()
            union = (bright | m).sum().item()
            assert union > 0 and inter / union > 0.9, stage


def test_albumentations_and_tensor_preprocessing_agree(tiny_data: Path) -> None:
    """The contract implemented twice: within about one grey level on real photos."""
    spec = PreprocessSpec(size=128)
    t = build_transforms("valid", 128)
    for row in read_csv(tiny_data / "dataset_valid.csv")[:4]:
        rgb = read_rgb(row[0])
        a = t(image=rgb)["image"]
        b = preprocess(torch.from_numpy(rgb), spec)
        assert a.shape == b.shape == (3, 128, 128)
        grey_levels = (a - b).abs() * torch.tensor(spec.std).view(3, 1, 1) * 255
        assert grey_levels.max() <= 1.01
        assert grey_levels.mean() < 0.3


def test_mask_of_other_size_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    img, mask = read_csv(tiny_data / "dataset_train.csv")[0]
    small = tmp_path / "small_mask.gif"
    Image.fromarray(read_mask(mask)[:50] * 255).save(small)
    csv_path = _write_csv(tmp_path / "bad.csv", [(img, small)])
    with pytest.raises(DataError,
                       match=r"small_mask.gif: mask is 240x50 but its image .* is 240x160"):
        SegmentationDataset(csv_path)


def test_missing_and_corrupt_images_are_named(tiny_data: Path, tmp_path: Path) -> None:
    rows = read_csv(tiny_data / "dataset_train.csv")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(rows[0][0].read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    gone = tmp_path / "gone.jpg"
    csv_path = _write_csv(tmp_path / "bad.csv",
                          [(gone, rows[0][1]), (text, rows[1][1]), (rows[2][0], rows[2][1])])
    with pytest.raises(DataError) as e:
        SegmentationDataset(csv_path)
    assert f"{gone}: no such file" in str(e.value)
    assert f"{text}: not a readable image" in str(e.value)
    # a file whose header is fine but whose data is cut is found when loaded, by name
    shutil.copy(rows[1][1], tmp_path / "m.gif")
    csv_path = _write_csv(tmp_path / "trunc.csv", [(truncated, rows[0][1])])
    ds = SegmentationDataset(csv_path, verify=False)
    with pytest.raises(DataError, match=r"truncated.jpg: corrupt or truncated image"):
        ds[0]


def test_empty_csv_and_wrong_columns(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("image,mask\n")
    with pytest.raises(DataError, match="empty data set"):
        SegmentationDataset(empty)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("img,msk\na.jpg,b.gif\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['image', 'mask'\]"):
        SegmentationDataset(wrong)
    with pytest.raises(FileNotFoundError, match="dataset CSV not found"):
        SegmentationDataset(tmp_path / "nope.csv")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_image_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    base = np.zeros((20, 30), np.uint8)
    base[5:15, 10:20] = 200
    if mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 257)
        assert img.mode.startswith("I;16")
    elif mode == "RGBA":
        a = np.dstack([base, base, base, np.full_like(base, 255)])
        a[0, 0, 3] = 0  # a transparent pixel shows the white background
        img = Image.fromarray(a, mode="RGBA")
    else:
        img = Image.fromarray(base, mode="L").convert(mode)
    path = tmp_path / f"im_{mode.replace(';', '')}.png"
    img.save(path)
    rgb = read_rgb(path)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert rgb[10, 15].tolist() == ([200 * 257 >> 8] * 3 if mode == "I;16" else [200] * 3)
    assert rgb[1, 1].tolist() == [0, 0, 0]
    if mode == "RGBA":
        assert rgb[0, 0].tolist() == [255, 255, 255]


def test_a_cached_dataset_gives_what_an_uncached_one_gives(tiny_data: Path, tmp_path: Path
                                                           ) -> None:
    csv_path = tiny_data / "dataset_train.csv"
    for soft in (False, True):
        plain = SegmentationDataset(csv_path, build_transforms("valid", 64, soft_targets=soft))
        cached = SegmentationDataset(csv_path, build_transforms("valid", 64, soft_targets=soft),
                                     cache=True)
        for i in (0, 1, 0):  # the second read of 0 comes from the cache
            a, b = plain[i], cached[i]
            assert torch.equal(a["features"], b["features"])
            assert torch.equal(a["targets"], b["targets"])
    # training items from the cache still draw their augmentations anew each time
    train = SegmentationDataset(csv_path, build_transforms("train", 64), cache=True)
    draws = {train[0]["features"].sum().item() for _ in range(6)}
    assert len(draws) > 1
    # a photo that goes bad after the first epoch is not read again: the cache answers
    rows = read_csv(csv_path)[:1]
    photo = tmp_path / "photo.jpg"
    shutil.copyfile(rows[0][0], photo)
    ds = SegmentationDataset(_write_csv(tmp_path / "one.csv", [(photo, rows[0][1])]),
                             build_transforms("valid", 64), cache=True)
    first = ds[0]["features"]
    photo.write_bytes(b"not a photo")
    assert torch.equal(ds[0]["features"], first)


def test_cache_refuses_transforms_it_cannot_split(tiny_data: Path) -> None:
    import albumentations as A

    with pytest.raises(DataError, match="FitLongestSide"):
        SegmentationDataset(tiny_data / "dataset_train.csv", A.Compose([A.HorizontalFlip()]),
                            cache=True)
    with pytest.raises(DataError, match="FitLongestSide"):
        SegmentationDataset(tiny_data / "dataset_train.csv", None, cache=True)
