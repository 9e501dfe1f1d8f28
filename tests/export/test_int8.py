"""`python -m export int8`: the quantized ONNX model, its manifest entry and its verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.cli import main


def test_int8_artifact_is_recorded_with_its_calibration_and_verified_on_photos(
        tiny_int8: Path, tiny_data: Path) -> None:
    m = json.loads((tiny_int8 / "manifest.json").read_text())
    q = m["artifacts"]["onnx_int8"]
    assert (q["file"], q["format"], q["precision"], q["device"]) == (
        "model.int8.onnx", "onnx", "int8", "cpu")
    assert q["calibration"] == {"source": str(tiny_data / "dataset_train.csv"), "images": 8,
                                "method": "minmax", "activations": "uint8",
                                "weights": "int8 per channel"}
    assert q["bytes"] == (tiny_int8 / "model.int8.onnx").stat().st_size
    assert q["bytes"] < m["artifacts"]["onnx"]["bytes"] / 2  # int8 weights
    parity = q["parity"]
    assert parity["passed"] and parity["tolerance"]["mask_iou"] == 0.99
    assert parity["tolerance"]["max_abs_diff"] is None
    assert parity["cases"] and {c["input"] for c in parity["cases"]} == {"images"}
    assert min(c["mask_iou"] for c in parity["cases"]) == parity["mask_iou"] >= 0.99
    # the fp32 entries keep theirs
    assert m["artifacts"]["onnx"]["parity"]["tolerance"]["mask_iou"] == 0.999


def test_verify_refuses_int8_that_misses_its_tolerance(tiny_int8: Path, tiny_logdir: Path,
                                                       tiny_data: Path, tmp_path: Path,
                                                       capsys) -> None:
    folder = tmp_path / "art"
    shutil.copytree(tiny_int8, folder)
    rc = main(["verify", str(folder), "--logdir", str(tiny_logdir), "--images",
               str(tiny_data / "dataset_valid.csv"), "--int8-min-iou", "1.01"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "onnx_int8" in out and "IoU>=1.01" in out and "FAIL" in out
    m = json.loads((folder / "manifest.json").read_text())
    assert m["artifacts"]["onnx_int8"]["parity"]["passed"] is False
    # without photos there is nothing to check an int8 model on
    rc = main(["verify", str(folder), "--logdir", str(tiny_logdir), "--images",
               str(tmp_path / "none.csv")])
    assert rc != 0


def test_int8_errors(tiny_artifacts: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "no_onnx"
    shutil.copytree(tiny_artifacts, folder)
    m = json.loads((folder / "manifest.json").read_text())
    del m["artifacts"]["onnx"]
    (folder / "manifest.json").write_text(json.dumps(m))
    assert main(["int8", str(folder), "--calibration", str(tiny_data / "train")]) == 2
    assert "no fp32 ONNX model to quantize" in capsys.readouterr().err
    assert not (folder / "model.int8.onnx").exists()

    folder = tmp_path / "art"
    shutil.copytree(tiny_artifacts, folder)
    assert main(["int8", str(folder), "--calibration", str(tmp_path / "nowhere")]) == 2
    assert "no such CSV or folder of photos" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["int8", str(folder), "--calibration", str(empty)]) == 2
    assert "no images" in capsys.readouterr().err
    assert not (folder / "model.int8.onnx").exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.pop("calibration"), "an int8 artifact records its calibration"),
    (lambda a: a.update(precision="fp32"), "precision: expected one of ['int8']"),
    (lambda a: a.update(format="torchscript"), "format: expected 'onnx'"),
])
def test_manifest_checks_the_int8_entry(tiny_int8: Path, tmp_path: Path, change,
                                        message: str) -> None:
    from carseg.runtime.manifest import load_manifest

    folder = tmp_path / "art"
    shutil.copytree(tiny_int8, folder)
    m = json.loads((folder / "manifest.json").read_text())
    change(m["artifacts"]["onnx_int8"])
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_manifest(folder)


def test_manifest_refuses_a_calibration_on_another_artifact(tiny_int8: Path,
                                                            tmp_path: Path) -> None:
    from carseg.runtime.manifest import load_manifest

    folder = tmp_path / "art"
    shutil.copytree(tiny_int8, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["artifacts"]["onnx"]["calibration"] = m["artifacts"]["onnx_int8"]["calibration"]
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"artifacts\.onnx\.calibration: only the int8 "
                                         r"artifact \(onnx_int8\) is calibrated; onnx is fp32"):
        load_manifest(folder)
