"""carseg.io.encode: the compositing rule, the encoders, and the one background parser."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from carseg.io.encode import composite, encode_cutout, encode_mask_png, parse_background


@pytest.fixture
def photo() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:30, 0:50]
    rgb = np.dstack([xx * 5, yy * 8, (xx + yy) * 3]).astype(np.uint8)  # smooth: JPEG-friendly
    mask = np.zeros((30, 50), np.uint8)
    mask[5:25, 10:40] = 1
    mask[0, 0] = 7  # any nonzero value is car
    return rgb, mask


def test_composite_follows_the_rule(photo) -> None:
    rgb, mask = photo
    car = mask > 0
    white = composite(rgb, mask, "white")
    assert white.shape == rgb.shape and white.dtype == np.uint8
    assert np.array_equal(white[car], rgb[car]) and (white[~car] == 255).all()
    rgba = composite(rgb, mask, "transparent")
    assert rgba.shape == (30, 50, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba[..., :3], rgb)
    assert (rgba[..., 3][car] == 255).all() and (rgba[..., 3][~car] == 0).all()
    with pytest.raises(ValueError, match=r"mask: expected shape \[30, 50\]"):
        composite(rgb, mask[:10], "white")


def test_encoded_files_decode_to_the_rule(photo) -> None:
    rgb, mask = photo
    data, suffix = encode_cutout(rgb, mask, "transparent")
    assert suffix == ".png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))),
                          composite(rgb, mask, "transparent"))
    data, suffix = encode_cutout(rgb, mask, "white")
    assert suffix == ".jpg"
    back = np.asarray(Image.open(io.BytesIO(data))).astype(int)
    assert np.abs(back - composite(rgb, mask, "white")).mean() < 3  # JPEG q95: close
    png = np.asarray(Image.open(io.BytesIO(encode_mask_png(mask))))
    assert np.array_equal(png, (mask > 0).astype(np.uint8) * 255)


def test_one_parser_names_the_field() -> None:
    assert parse_background("white") == "white"
    assert parse_background("none", allow_none=True) == "none"
    assert parse_background("#A0b0C0") == "#A0b0C0"
    with pytest.raises(ValueError, match="background: expected white, transparent, #RRGGBB or an "
                                         "image file, got 'blue' \\(no such file\\)"):
        parse_background("blue")
    with pytest.raises(ValueError, match="--cutout: expected white, transparent, #RRGGBB or an "
                                         "image file, or none"):
        parse_background("blue", allow_none=True, field="--cutout")
    with pytest.raises(ValueError, match="got 'none' \\(no such file\\)"):
        parse_background("none")
    with pytest.raises(ValueError, match=r"background: expected a colour as #RRGGBB \(six hex "
                                         r"digits\), got '#12345g'"):
        parse_background("#12345g")


def test_a_jpeg_cutout_refusal_names_the_size_the_limit_and_the_way_out() -> None:
    from carseg.io.encode import MAX_JPEG_SIDE, jpeg_cutout_refusal

    assert jpeg_cutout_refusal(MAX_JPEG_SIDE, 10, "--background transparent") is None
    why = jpeg_cutout_refusal(10, MAX_JPEG_SIDE + 1, "--background transparent")
    assert why == (f"is 10x{MAX_JPEG_SIDE + 1}: too large for a JPEG cutout (JPEG's sides are "
                   f"at most {MAX_JPEG_SIDE} pixels); use --background transparent (PNG)")
