"""The benchmark harness as a smoke test: it runs, and every backend reports or says why not.
No assertion on speed (machines are noisy); accuracy figures are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.measure import parity, percentile
from benchmarks.run import RESULTS, main

EXPECTED = {"eager", "eager-cl", "torchscript", "onnxruntime", "aoti", "torch.compile",
            "carseg_infer/torchscript", "carseg_infer/torchscript+onednn", "carseg_infer/aoti",
            "bindings"}


def test_quick_run_reports_every_backend(tiny_artifacts: Path, tmp_path: Path,
                                         monkeypatch) -> None:
    """A plain run writes under ./out/benchmarks/<device> (untracked), never into the
    committed benchmarks/results/ (that takes --commit)."""
    committed = {p: p.stat().st_mtime for p in RESULTS.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    assert main(["--artifacts", str(tiny_artifacts), "--quick", "--no-compile", "--iters",
                 "3"]) == 0
    (out,) = (tmp_path / "out" / "benchmarks").iterdir()
    assert committed == {p: p.stat().st_mtime for p in RESULTS.rglob("*") if p.is_file()}
    results = json.loads((out / "results.json").read_text())
    names = {e["backend"] for e in results["backends"]}
    assert EXPECTED <= names
    for e in results["backends"]:
        if "skipped" in e:
            assert e["skipped"], e["backend"]  # a reason, not an empty string
            continue
        assert e["cells"], e["backend"]
        for c in e["cells"]:
            assert "error" not in c, (e["backend"], c)
            assert c["p50_ms"] > 0 and c["p50_ms"] <= c["p99_ms"]
            if not e["backend"].startswith("carseg_infer"):  # another process: its own memory
                assert c["peak_memory_mib"] > 0 and c["peak_memory_increase_mib"] > -1.0
            if "mask_iou" in c:  # fp32 backends on the same model agree with eager
                assert c["max_abs_diff"] <= 1e-3 and c["mask_iou"] >= 0.99, (e["backend"], c)
    ran = {e["backend"] for e in results["backends"] if "skipped" not in e}
    assert {"eager", "torchscript", "onnxruntime"} <= ran
    assert results["flops_per_image"] and all(v > 1e8 for v in results["flops_per_image"].values())
    assert results["peak"]["matmul_float32_tflops"] > 0
    md = (out / "results.md").read_text()
    assert "| torchscript |" in md and "Skipped:" in md
    plots = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert plots and all(f"]({name})" in md for name in plots)  # the page embeds its plots


def test_percentile_and_parity_helpers() -> None:
    import torch

    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    a = torch.tensor([[-5.0, 5.0], [5.0, -5.0]])
    b = torch.tensor([[-5.0, 5.0], [-5.0, -5.0]])
    p = parity(a, b)
    assert p["max_abs_diff"] == 10.0 and p["mask_iou"] == 0.5


def test_end_to_end_rounds_compare_every_pipeline_with_the_seed(
        tiny_int8: Path, tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """benchmarks.e2e: each pipeline timed in every round on the folder's JPEGs alone (a PNG
    beside them is left out, as the seed script leaves it), carseg_infer's rows say what they
    ran on (the defaults int8, as the folder's int8 model passed verify; fp32 where asked),
    and the ratios are each round's speed over the seed's."""
    import shutil

    from benchmarks import e2e

    photos = tmp_path / "photos"
    shutil.copytree(tiny_data / "train", photos)
    jpegs = len(list(photos.glob("*.jpg")))
    Image.open(next(photos.glob("*.jpg"))).save(photos / "extra.png")
    monkeypatch.chdir(tmp_path)
    assert e2e.main(["--artifacts", str(tiny_int8), "--photos", str(photos),
                     "--rounds", "2"]) == 0
    (out,) = (tmp_path / "out" / "benchmarks").iterdir()
    r = json.loads((out / "e2e.json").read_text())
    assert r["photos"] == jpegs > 0
    speed = r["images_per_s"]
    assert len(speed) == 5 and e2e.SEED in speed
    for label, v in speed.items():
        assert len(v) == 2 and all(x > 0 for x in v), label
        assert r["ratio_to_seed_per_round"][label] == [
            a / b for a, b in zip(v, speed[e2e.SEED], strict=True)]
    ran = r["carseg_infer_ran_on"]
    assert {ran[k]["precision"] for k in ran if "fp32" in k} == {"fp32"}
    assert {ran[k]["precision"] for k in ran if "fp32" not in k} == {"int8"}  # auto: verified
    assert all(ran[k]["device"] == "cpu" and ran[k]["succeeded"] == jpegs for k in ran)
    md = (out / "e2e.md").read_text()
    assert all(f"| {label} |" in md for label in speed)
    assert "What the refinement costs carseg_infer (int8" in md
    assert "What the refinement costs carseg_infer (fp32" in md


def test_end_to_end_refuses_a_folder_without_photos(tiny_artifacts: Path,
                                                    tmp_path: Path) -> None:
    import pytest

    from benchmarks import e2e

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no JPEG photos"):
        e2e.main(["--artifacts", str(tiny_artifacts), "--photos", str(tmp_path / "empty")])


def test_cutout_quality_groups_the_photos_by_car() -> None:
    from benchmarks.cutout_quality import per_car

    label = {False: "no refinement", True: "refined"}
    stems = ["aaa_01", "aaa_02", "b_c_01", "aaa_03"]  # a car id may hold an underscore
    scores = {"Python reference, mask (no refinement)": {"dice": [0.9, 0.8, 0.5, 0.7],
                                                          "bf1": [0.3, 0.1, 0.2, 0.2]},
              "Python reference, mask (refined)": {"dice": [1.0, 0.9, 0.6, 0.8],
                                                   "bf1": [0.9, 0.6, 0.4, 0.3]}}
    cars = per_car(stems, scores, label)
    assert list(cars) == ["aaa", "b_c"]
    assert cars["aaa"]["photos"] == 3 and cars["b_c"]["photos"] == 1
    assert cars["aaa"]["plain"] == (pytest.approx(0.8), pytest.approx(0.2))
    assert cars["aaa"]["refined"] == (pytest.approx(0.9), pytest.approx(0.6))
    assert cars["b_c"]["refined"] == (pytest.approx(0.6), pytest.approx(0.4))
