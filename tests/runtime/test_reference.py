"""The reference predictor: manifest in, masks at the photo's own size out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import config_refine_spec, copy_of, eager_model

from carseg.errors import CarsegError
from carseg.io.images import read_rgb
from carseg.runtime import refine
from carseg.runtime.preprocess import (
    PreprocessSpec,
    mask_from_logits,
    postprocess_logits,
    preprocess,
)
from carseg.runtime.reference import ReferencePredictor


@pytest.fixture(scope="module")
def photos(tiny_data: Path) -> list[np.ndarray]:
    paths = sorted((tiny_data / "train").glob("*.jpg"))[:2]
    a, b = (read_rgb(p) for p in paths)
    return [a, b[:120, :200].copy()]  # 160x240 and 120x200: two sizes in one batch


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_predict_matches_eager_through_the_contract(backend: str, tiny_artifacts: Path,
                                                    tiny_logdir: Path, photos) -> None:
    predictor = ReferencePredictor(tiny_artifacts, backend=backend, refine=False)
    spec = PreprocessSpec(size=64)
    model = eager_model(tiny_logdir)
    for photo in photos:
        logits = predictor.predict_logits(photo)
        assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
        assert logits.shape == photo.shape[:2]
        with torch.no_grad():
            raw = model(preprocess(torch.from_numpy(photo.copy()), spec)[None])[0]
        ref = postprocess_logits(raw, photo.shape[:2], spec).numpy()
        assert np.abs(logits - ref).max() <= 1e-4
        mask = predictor.predict(photo)
        assert mask.dtype == np.uint8 and mask.shape == photo.shape[:2]
        assert set(np.unique(mask)) <= {0, 1}
        ref_mask = mask_from_logits(torch.from_numpy(ref), 0.5).numpy()
        assert (mask != ref_mask).mean() <= 1e-3


def test_the_mask_is_refined_as_the_manifest_says(tiny_artifacts: Path, tiny_logdir: Path,
                                                  photos) -> None:
    """Export records the refinement (the config's shared.refine); predict applies it to the
    model's logits: the mask is refine.matte's, computed here from the eager model."""
    predictor = ReferencePredictor(tiny_artifacts, backend="torchscript")
    recorded = config_refine_spec()
    assert predictor.manifest.output["refine"] == recorded.to_json()
    assert predictor.refine == recorded
    spec, model = PreprocessSpec(size=64), eager_model(tiny_logdir)
    for photo in photos:
        t = torch.from_numpy(photo.copy())
        with torch.no_grad():
            raw = model(preprocess(t, spec)[None])[0]
        small = postprocess_logits(raw, recorded.grid(*photo.shape[:2], 64)[0], spec)
        fit = refine.fit(t, small, recorded, 0.5, 64)
        want, alpha = refine.matte(t, fit)
        mask = predictor.predict(photo)
        assert (mask != want.numpy()).mean() <= 1e-3
        got_mask, got_alpha = predictor.predict_matte(photo)
        assert np.array_equal(got_mask, mask)
        assert np.abs(got_alpha.astype(int) - refine.to_u8(alpha).numpy()).max() <= 1
        assert (got_alpha[mask == 1] >= 128).all() and (got_alpha[mask == 0] <= 128).all()


def test_predict_batch_of_different_sizes(tiny_artifacts: Path, photos) -> None:
    predictor = ReferencePredictor(tiny_artifacts, backend="torchscript")
    masks = predictor.predict_batch(photos)
    assert [m.shape for m in masks] == [p.shape[:2] for p in photos]
    for m, p in zip(masks, photos, strict=True):
        assert np.array_equal(m, predictor.predict(p))


def test_tensor_in_tensor_out_and_threshold(tiny_artifacts: Path, photos) -> None:
    low = ReferencePredictor(tiny_artifacts, backend="onnx", threshold=0.01)
    high = ReferencePredictor(tiny_artifacts, backend="onnx", threshold=0.99)
    t = torch.from_numpy(photos[0].copy())
    m_low, m_high = low.predict(t), high.predict(t)
    assert isinstance(m_low, torch.Tensor) and m_low.dtype == torch.uint8
    assert m_low.sum() >= m_high.sum()
    assert torch.equal(low.predict_logits(t), high.predict_logits(t))
    assert low.threshold == 0.01 and "backend='onnx'" in repr(low)


def test_refuses_a_tampered_file(tiny_artifacts: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny_artifacts, tmp_path)
    path = folder / "model.torchscript.pt"
    with path.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(CarsegError) as e:
        ReferencePredictor(folder, backend="torchscript")
    msg = str(e.value)
    assert f"{path}: sha256 mismatch" in msg
    from export.manifest import load_manifest, sha256_file

    assert load_manifest(folder).artifacts["torchscript"]["sha256"] in msg
    assert sha256_file(path) in msg
    ReferencePredictor(folder, backend="onnx")  # the untouched file still loads


def test_bad_arguments(tiny_artifacts: Path, tmp_path: Path, photos) -> None:
    with pytest.raises(ValueError, match="backend: expected one of"):
        ReferencePredictor(tiny_artifacts, backend="tensorrt")
    with pytest.raises(ValueError, match="no 'aoti' artifact"):
        ReferencePredictor(tiny_artifacts, backend="aoti")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        ReferencePredictor(tmp_path, backend="onnx")
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        ReferencePredictor(tiny_artifacts, threshold=1.5)
    p = ReferencePredictor(tiny_artifacts)
    with pytest.raises(ValueError, match="expected dtype uint8"):
        p.predict(photos[0].astype(np.float32))
    with pytest.raises(ValueError, match=r"expected shape \[H, W, 3\]"):
        p.predict(photos[0][..., :2].copy())
    with pytest.raises(ValueError, match="at least one image"):
        p.predict_batch([])
