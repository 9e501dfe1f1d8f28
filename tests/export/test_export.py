"""Export from the tiny trained run: artifacts load elsewhere, match eager, verify catches lies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import (
    BATCHES,
    check_fresh_process_parity,
    copy_of,
    eager_model,
    exported,
    iou,
    manifest_json,
)

from export.cli import main
from export.manifest import load_manifest, sha256_file
from export.verify import SCALE


# ---- the manifest describes the files ----------------------------------------------------------
def test_manifest_matches_files_and_run(tiny_artifacts: Path, tiny_logdir: Path) -> None:
    m = load_manifest(tiny_artifacts)
    assert sorted(m.artifacts) == ["onnx", "torchscript"]
    for name, a in m.artifacts.items():
        path = tiny_artifacts / a["file"]
        assert sha256_file(path) == a["sha256"], name
        assert path.stat().st_size == a["bytes"], name
        assert a["precision"] == "fp32" and a["device"] == "cpu"
        assert a["dynamic"] == {"batch": True, "spatial": True}, name
        assert a["export_seconds"] > 0
        assert a["parity"]["passed"] is True  # `export all` verified and recorded it
    assert m.artifacts["onnx"]["opset"] == 18
    assert m.preprocessing["size"] == 64  # the tiny run's --image-size
    assert m.input == {"name": "input", "dtype": "float32", "shape": ["N", 3, 64, 64]}
    assert m.output["name"] == "logits" and m.output["threshold"] == 0.5
    assert m.source["logdir"] == str(tiny_logdir.resolve())
    ckpt = tiny_logdir / "checkpoints" / "model.best.pth"
    assert m.source["checkpoint_sha256"] == sha256_file(ckpt)
    summary = json.loads((tiny_logdir / "summary.json").read_text())
    assert m.source["valid"] == pytest.approx(summary["valid"])
    assert m.model["parameters"] == sum(p.numel() for p in eager_model(tiny_logdir).parameters())
    assert not [p.name for p in tiny_artifacts.iterdir() if p.name.endswith(".tmp")
                or p.name.startswith(".model")]


def test_onnx_graph_contract(tiny_artifacts: Path) -> None:
    path = tiny_artifacts / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d for d in inp.type.tensor_type.shape.dim]
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, 3, H, W
    assert dims[1].dim_value == 3


# ---- each format in a fresh process, against eager ----------------------------------------------
@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_fresh_process_parity(backend: str, tiny_artifacts: Path, tiny_logdir: Path,
                              tmp_path: Path) -> None:
    file = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}[backend]
    diffs = check_fresh_process_parity(backend, tiny_artifacts / file, tiny_logdir, tmp_path)
    assert len(diffs) == len(BATCHES) * 2


def test_torchscript_seed_style(tiny_artifacts: Path, tiny_logdir: Path, tiny_data: Path) -> None:
    """The seed tutorial's way: torch.jit.load, a normalized tensor in, sigmoid > thr out."""
    from carseg.io.images import read_rgb
    from carseg.runtime.preprocess import PreprocessSpec, preprocess

    photo = read_rgb(sorted((tiny_data / "train").glob("*.jpg"))[0]).copy()
    x = preprocess(torch.from_numpy(photo), PreprocessSpec(size=64))[None]
    model = torch.jit.load(str(tiny_artifacts / "model.torchscript.pt"))
    with torch.no_grad():
        mask = (torch.sigmoid(model(x)) > 0.5)[0, 0]
        ref = (torch.sigmoid(eager_model(tiny_logdir)(x)) > 0.5)[0, 0]
    assert mask.shape == (64, 64)
    assert iou(mask, ref) >= 0.999
    assert mask.sum().item() == ref.sum().item()


def test_torchscript_convolutions_are_fp32_not_tf32(tiny_artifacts: Path) -> None:
    """A trace records cuDNN's TF32 flag in every convolution; the export records False, so the
    fp32 artifact is fp32 on any GPU it is loaded on (found on the second GPU run, H200: 6.2e-3
    from eager with the default flag baked in)."""
    model = torch.jit.load(str(tiny_artifacts / "model.torchscript.pt"))
    convs = [n for n in model.graph.nodes() if n.kind() == "aten::_convolution"]
    assert len(convs) >= 10
    allow_tf32 = [list(n.inputs())[-1].toIValue() for n in convs]
    assert allow_tf32 == [False] * len(convs)
    assert torch.backends.cudnn.allow_tf32  # the export put the process's flag back


# ---- verify ------------------------------------------------------------------------------------
def test_verify_passes_and_records_parity(tiny_artifacts: Path, tmp_path: Path, capsys) -> None:
    folder = copy_of(tiny_artifacts, tmp_path)
    report = tmp_path / "parity.json"
    assert main(["verify", str(folder), "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert "torchscript" in table and "onnx" in table and "FAIL" not in table
    assert table.count("PASS") == 2
    r = json.loads(report.read_text())
    assert r["passed"] is True and len(r["photos"]) == 4
    m = load_manifest(folder)
    for name in ("torchscript", "onnx"):
        parity = m.artifacts[name]["parity"]
        assert parity["passed"] is True
        assert parity["max_abs_diff"] <= 1e-4 and parity["mask_iou"] >= 0.999
        cases = parity["cases"]
        assert {c["batch"] for c in cases} == {1, 4}
        assert {tuple(c["hw"]) for c in cases if c["input"] == "random"} == {(64, 64), (32, 96)}
        assert {tuple(c["hw"]) for c in cases if c["input"] == "images"} == {(64, 64), (96, 96)}
        # the recorded numbers are the ones measured, not just a flag
        assert parity["max_abs_diff"] == max(c["max_abs_diff"] for c in cases) > 0
        assert all(c["max_abs_diff"] <= 1e-4 * c["logit_scale"] and c["logit_scale"] >= 1
                   for c in cases)
    # verify rewrites only parity: hashes stay those of the files
    assert sha256_file(folder / "model.onnx") == m.artifacts["onnx"]["sha256"]


def test_verify_fails_on_tampered_artifact(tiny_artifacts: Path, tmp_path: Path, capsys) -> None:
    folder = copy_of(tiny_artifacts, tmp_path)
    path = folder / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "sha256 mismatch" in out and str(path) in out
    onnx_line = next(ln for ln in out.splitlines() if ln.startswith("onnx "))
    ts_line = next(ln for ln in out.splitlines() if ln.startswith("torchscript "))
    assert onnx_line.endswith("FAIL") and ts_line.endswith("PASS")
    m = manifest_json(folder)
    # never certify a file it does not describe: the old record stays, the new one is not made
    old = manifest_json(tiny_artifacts)["artifacts"]
    assert m["artifacts"]["onnx"]["parity"] == old["onnx"]["parity"]
    assert m["artifacts"]["torchscript"]["parity"]["checked_at"] >= \
        old["torchscript"]["parity"]["checked_at"]
    assert m["artifacts"]["torchscript"]["parity"]["passed"] is True


def test_verify_fails_on_impossible_tolerance(tiny_artifacts: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.json"
    before = (tiny_artifacts / "manifest.json").read_text()
    rc = main(["verify", str(tiny_artifacts), "--min-iou", "1.01", "--no-record", "--batches", "1",
               "--json", str(report)])
    assert rc == 1
    assert capsys.readouterr().out.count("FAIL") == 2
    r = json.loads(report.read_text())
    assert r["passed"] is False
    assert all(a["parity"]["tolerance"]["mask_iou"] == 1.01 for a in r["artifacts"])
    assert all(a["mask_iou"] <= 1.0 for a in r["artifacts"])
    assert (tiny_artifacts / "manifest.json").read_text() == before  # --no-record


def test_verify_runs_a_cuda_onnx_file_on_the_cpu_where_onnxruntime_has_no_cuda(
        tiny_artifacts: Path, tmp_path: Path, capsys) -> None:
    """Found on the first GPU run (H200): the image's onnxruntime is the CPU build, and verify
    failed every ONNX file exported for cuda ("no CUDA provider"). An ONNX file is the same
    for every provider: verify now runs it where ONNX Runtime can, says so, and checks it."""
    import onnxruntime as ort

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime runs CUDA: the file is checked there")
    folder = copy_of(tiny_artifacts, tmp_path)
    m = manifest_json(folder)
    m["artifacts"]["onnx"]["device"] = "cuda"
    (folder / "manifest.json").write_text(json.dumps(m))
    report = tmp_path / "r.json"
    assert main(["verify", str(folder), "--no-record", "--batches", "1",
                 "--json", str(report)]) == 0
    onnx = next(a for a in json.loads(report.read_text())["artifacts"]
                if a["artifact"] == "onnx")
    assert onnx["passed"] and onnx["ran_on"] == "cpu" and onnx["max_abs_diff"] <= 1e-4
    assert "checking the ONNX file on the CPU" in capsys.readouterr().err


def test_verify_atol_flag_is_applied(tiny_artifacts: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert main(["verify", str(tiny_artifacts), "--atol", "1e-12", "--no-record", "--batches", "1",
                 "--json", str(report)]) == 1
    r = json.loads(report.read_text())
    assert all(a["max_abs_diff"] > 1e-12 and not a["passed"] for a in r["artifacts"])


# ---- fp16 --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fp16_torchscript_takes_half_and_keeps_masks(tmp_path_factory, tiny_logdir: Path,
                                                     tmp_path: Path) -> None:
    folder = exported(tmp_path_factory, tiny_logdir, "fp16", ("torchscript",), precision="fp16")
    m = load_manifest(folder)
    assert m.input["dtype"] == "float16" and m.output["dtype"] == "float16"
    assert m.artifacts["torchscript"]["precision"] == "fp16"
    assert m.artifacts["torchscript"]["bytes"] < 0.6 * 57e6  # half the weights' bytes
    module = torch.jit.load(str(folder / "model.torchscript.pt"))
    y = module(torch.zeros(2, 3, 64, 64, dtype=torch.float16))
    assert y.dtype == torch.float16 and y.shape == (2, 1, 64, 64)
    folder = copy_of(folder, tmp_path)
    assert main(["verify", str(folder), "--batches", "1,4"]) == 0
    parity = load_manifest(folder).artifacts["torchscript"]["parity"]
    assert parity["passed"] and parity["mask_iou"] >= 0.995
    assert parity["tolerance"] == {"max_abs_diff": None, "mask_iou": 0.995,
                                   "max_abs_diff_relative_to": SCALE}
    assert parity["max_abs_diff"] > 1e-4  # really fp16: its logits differ from fp32's


# ---- AOTInductor: the one compile of the session ------------------------------------------------
@pytest.mark.slow
def test_aoti_package_parity_and_verify(tiny_artifacts_all: Path, tiny_logdir: Path, tmp_path: Path,
                                        capsys) -> None:
    m = load_manifest(tiny_artifacts_all)
    a = m.artifacts["aoti"]
    assert a["file"] == "model.pt2" and sha256_file(tiny_artifacts_all / "model.pt2") == a["sha256"]
    assert a["dynamic"] == {"batch": True, "spatial": True}
    check_fresh_process_parity("aoti", tiny_artifacts_all / "model.pt2", tiny_logdir, tmp_path)
    folder = copy_of(tiny_artifacts_all, tmp_path)
    assert main(["verify", str(folder), "--batches", "1,4"]) == 0
    assert "aoti" in capsys.readouterr().out
    assert load_manifest(folder).artifacts["aoti"]["parity"]["passed"] is True


@pytest.mark.slow
def test_aoti_reference_predictor(tiny_artifacts_all: Path, tiny_artifacts: Path,
                                  tiny_data: Path) -> None:
    from carseg.io.images import read_rgb
    from carseg.runtime.reference import ReferencePredictor

    photo = read_rgb(sorted((tiny_data / "train").glob("*.jpg"))[1])
    aoti = ReferencePredictor(tiny_artifacts_all, backend="aoti").predict_logits(photo)
    ts = ReferencePredictor(tiny_artifacts, backend="torchscript").predict_logits(photo)
    assert aoti.shape == photo.shape[:2] and aoti.dtype == np.float32
    assert np.abs(aoti - ts).max() <= 2e-4


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_on_the_gpu_verifies(tiny_logdir: Path, tmp_path: Path, precision: str) -> None:
    """On a GPU: TorchScript and ONNX exported for CUDA pass verify. fp16 by mask IoU >= 0.995
    against eager fp32; fp32 by fp32's own tolerance, which the first GPU run (H200) missed
    20x while cuDNN's convolutions ran in TF32 (verify now turns TF32 off for fp32)."""
    out = tmp_path / precision
    assert main(["all", "--logdir", str(tiny_logdir), "--out", str(out), "--formats",
                 "torchscript,onnx", "--device", "cuda", "--precision", precision]) == 0
    m = load_manifest(out)
    for name in ("torchscript", "onnx"):
        a = m.artifacts[name]
        assert a["precision"] == precision and a["device"] == "cuda" and a["parity"]["passed"]
    assert torch.backends.cudnn.allow_tf32  # verify put the process's setting back


def test_fp32_tolerance_scales_with_the_logits() -> None:
    """Found rehearsing the GPU check: a model trained 2 epochs at 256 px has logits up to 400,
    and its fp32 artifacts were 8.5e-4 apart from eager (2e-6 of that scale): a pass. The
    same difference on logits of scale 1 is a failure."""
    from export.verify import DEFAULT_TOLERANCES, diffs_within

    fp32, fp16 = DEFAULT_TOLERANCES["fp32"], DEFAULT_TOLERANCES["fp16"]
    assert diffs_within([{"max_abs_diff": 8.5e-4, "logit_scale": 398.5}], fp32)
    assert not diffs_within([{"max_abs_diff": 8.5e-4, "logit_scale": 1.0}], fp32)
    assert not diffs_within([{"max_abs_diff": 1e-5, "logit_scale": 1.0},
                             {"max_abs_diff": 2e-3, "logit_scale": 10.0}], fp32)
    assert diffs_within([{"max_abs_diff": 5.0, "logit_scale": 1.0}], fp16)  # fp16: masks only
