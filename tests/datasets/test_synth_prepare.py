"""carseg synth and carseg prepare: layout, determinism, pairing, refusals."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from carseg.cli import main
from carseg.datasets.prepare import pair_files, prepare
from carseg.datasets.synth import parse_size, write_dataset
from carseg.errors import DataError
from carseg.io.images import read_mask, read_rgb


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_layout_is_carvanas(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path), "--num", "10", "--size", "96x144",
                 "--views", "4"]) == 0
    images = sorted((tmp_path / "train").glob("*.jpg"))
    masks = sorted((tmp_path / "train_masks").glob("*_mask.gif"))
    assert len(images) == 10 and len(masks) == 10
    # <12 hex>_<2-digit view>: 3 cars, views 01..04
    cars = {p.stem.split("_")[0] for p in images}
    assert len(cars) == 3 and all(len(c) == 12 and int(c, 16) >= 0 for c in cars)
    assert sorted({p.stem.split("_")[1] for p in images}) == ["01", "02", "03", "04"]
    for img in images:
        rgb = read_rgb(img)
        mask = read_mask(tmp_path / "train_masks" / f"{img.stem}_mask.gif")
        assert rgb.shape == (96, 144, 3) and rgb.dtype == np.uint8
        assert mask.shape == (96, 144) and set(np.unique(mask)) <= {0, 1}
        # a car, not an empty frame or a full frame
        assert 0.05 < mask.mean() < 0.8


def test_synth_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", 6, size=(64, 96), seed=3)
    write_dataset(tmp_path / "b", 6, size=(64, 96), seed=3)
    write_dataset(tmp_path / "c", 6, size=(64, 96), seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_synth_cars_differ_in_colour_and_car_is_not_the_background(tmp_path: Path) -> None:
    write_dataset(tmp_path, 48, size=(96, 144), seed=11, views=8)
    means = []
    for img in sorted((tmp_path / "train").glob("*.jpg")):
        rgb = read_rgb(img).astype(np.float32)
        mask = read_mask(tmp_path / "train_masks" / f"{img.stem}_mask.gif").astype(bool)
        means.append(rgb[mask].mean(0))
    means = np.array(means)
    # six cars, several paints: the per-photo car colour varies a lot
    assert np.ptp(means, axis=0).max() > 60


@pytest.mark.parametrize("text", ["640", "axb", "10x10", "640x960x3"])
def test_synth_refuses_bad_size(text: str) -> None:
    with pytest.raises(ValueError, match="--size"):
        parse_size(text)


def test_prepare_pairs_by_name_and_splits_by_car(tmp_path: Path) -> None:
    write_dataset(tmp_path, 40, size=(64, 96), seed=1, views=8)
    train_csv, valid_csv = prepare(tmp_path, valid_size=0.2, seed=42)
    rows = {}
    for name, path in (("train", train_csv), ("valid", valid_csv)):
        with path.open() as f:
            rows[name] = list(csv.DictReader(f))
        for r in rows[name]:
            assert Path(r["mask"]).name == Path(r["image"]).stem + "_mask.gif"
            assert Path(r["image"]).is_file() and Path(r["mask"]).is_file()
    assert len(rows["train"]) + len(rows["valid"]) == 40
    assert len(rows["valid"]) == 8  # 1 of 5 cars
    car = lambda r: Path(r["image"]).stem.split("_")[0]  # noqa: E731
    assert not {car(r) for r in rows["train"]} & {car(r) for r in rows["valid"]}


def test_prepare_refuses_unpaired_files_naming_them(tmp_path: Path) -> None:
    write_dataset(tmp_path, 8, size=(64, 96), seed=1, views=4)
    masks = sorted((tmp_path / "train_masks").iterdir())
    images = sorted((tmp_path / "train").iterdir())
    masks[0].unlink()
    images[-1].unlink()
    with pytest.raises(DataError) as e:
        pair_files(tmp_path)
    msg = str(e.value)
    assert "2 unpaired" in msg
    assert f"{images[0]}: no mask" in msg
    assert f"{masks[-1]}: no image" in msg


def test_prepare_refuses_missing_folder_and_empty_set(tmp_path: Path, capsys) -> None:
    assert main(["prepare", "--datapath", str(tmp_path / "nope")]) == 2
    assert "data folder does not exist" in capsys.readouterr().err
    (tmp_path / "train").mkdir()
    (tmp_path / "train_masks").mkdir()
    with pytest.raises(DataError, match="no images"):
        pair_files(tmp_path)
    (tmp_path / "other" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="train_masks: folder missing"):
        pair_files(tmp_path / "other")


def test_real_carvana_names_and_gif_masks_work(tmp_path: Path) -> None:
    """Carvana's GIF masks store palette indices 0/1, not 0/255."""
    from PIL import Image

    (tmp_path / "train").mkdir()
    (tmp_path / "train_masks").mkdir()
    for i, car in enumerate(["0cdf5b5d0ce1", "fff9b3a5373f"]):
        rgb = np.full((128, 192, 3), 200, np.uint8)
        Image.fromarray(rgb).save(tmp_path / "train" / f"{car}_{i + 1:02d}.jpg")
        idx = np.zeros((128, 192), np.uint8)
        idx[40:90, 50:150] = 1
        gif = Image.fromarray(idx, mode="P")
        gif.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        gif.save(tmp_path / "train_masks" / f"{car}_{i + 1:02d}_mask.gif")
    train_csv, valid_csv = prepare(tmp_path, valid_size=0.5, seed=0)
    m = read_mask(tmp_path / "train_masks" / "0cdf5b5d0ce1_01_mask.gif")
    assert m.sum() == 50 * 100 and set(np.unique(m)) == {0, 1}
