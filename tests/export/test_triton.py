"""python -m export triton: configs that Triton's own schema parses, matching the models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("tritonclient.grpc", reason="the `scale` extra (tritonclient) is missing")

from export.cli import main  # noqa: E402
from export.triton import describe_repository  # noqa: E402

TYPE_OF = {"TYPE_FP32": torch.float32, "TYPE_FP16": torch.float16}


def test_repository_configs_match_the_models(tiny_artifacts: Path, tmp_path: Path) -> None:
    import onnx
    from tritonclient.grpc import model_config_pb2 as pb

    repo = tmp_path / "repo"
    assert main(["triton", "--artifacts", str(tiny_artifacts), "--out", str(repo),
                 "--max-batch", "8", "--instances", "2", "--kind", "cpu"]) == 0
    configs = describe_repository(repo)
    assert set(configs) == {"carseg_onnx", "carseg_torchscript"}
    for c in configs.values():
        assert c.max_batch_size == 8 and c.dynamic_batching.max_queue_delay_microseconds > 0
        assert c.instance_group[0].count == 2
        assert c.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert json.loads((repo / "manifest.json").read_text()) == \
        json.loads((tiny_artifacts / "manifest.json").read_text())
    assert "tritonserver --model-repository" in (repo / "README.md").read_text()

    # ONNX: names, element types and dims are the graph's own
    c = configs["carseg_onnx"]
    assert c.backend == "onnxruntime"
    graph = onnx.load(str(repo / "carseg_onnx" / "1" / "model.onnx")).graph
    inits = {i.name for i in graph.initializer}
    (gin,) = [v for v in graph.input if v.name not in inits]
    (gout,) = list(graph.output)
    for t, v in ((c.input[0], gin), (c.output[0], gout)):
        assert t.name == v.name
        assert pb.DataType.Name(t.data_type) == "TYPE_FP32"
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = [d.dim_value if d.HasField("dim_value") else -1
                for d in v.type.tensor_type.shape.dim]
        assert list(t.dims) == dims[1:]

    # TorchScript: run the copied module with the declared input; the output is declared
    c = configs["carseg_torchscript"]
    assert c.platform == "pytorch_libtorch" and c.backend == "pytorch"
    assert c.input[0].name == "INPUT__0" and c.output[0].name == "OUTPUT__0"
    module = torch.jit.load(str(repo / "carseg_torchscript" / "1" / "model.pt"))
    inputs = [a for a in module.forward.schema.arguments if a.name != "self"]
    assert len(inputs) == 1
    in_dims = [64 if d == -1 else d for d in c.input[0].dims]
    x = torch.zeros(2, *in_dims, dtype=TYPE_OF[pb.DataType.Name(c.input[0].data_type)])
    with torch.inference_mode():
        y = module(x)
    assert y.dtype == TYPE_OF[pb.DataType.Name(c.output[0].data_type)]
    assert len(c.output[0].dims) == y.ndim - 1
    for declared, got in zip(c.output[0].dims, y.shape[1:], strict=True):
        assert declared in (-1, got)


def test_refuses_unverified_and_tampered_artifacts(tiny_artifacts: Path, tmp_path: Path,
                                                   capsys) -> None:
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["artifacts"]["onnx"]["parity"] = None
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert main(["triton", "--artifacts", str(art), "--out", str(tmp_path / "r1")]) == 2
    assert "model.onnx: not verified" in capsys.readouterr().err
    with (art / "model.torchscript.pt").open("ab") as f:
        f.write(b"tampered")
    assert main(["triton", "--artifacts", str(art), "--out", str(tmp_path / "r2"),
                 "--allow-unverified"]) == 2
    assert "model.torchscript.pt: sha256 does not match" in capsys.readouterr().err


def test_the_readmes_client_snippet_follows_the_manifest(tiny_artifacts: Path, tiny_data: Path,
                                                         tmp_path: Path, monkeypatch) -> None:
    """The generated README's Python, run as written, with the Triton server stood in for by
    onnxruntime on the repository's ONNX model: its plain mask is the reference predictor's
    without refinement, and its refined mask and matte are the reference's with it."""
    import re
    import types

    import numpy as np
    import onnxruntime as ort
    import tritonclient
    from PIL import Image

    from carseg.io.images import read_rgb
    from carseg.runtime.reference import ReferencePredictor

    repo = tmp_path / "repo"
    assert main(["triton", "--artifacts", str(tiny_artifacts), "--out", str(repo)]) == 0
    plain, refined = re.findall(r"```python\n(.*?)```", (repo / "README.md").read_text(), re.S)
    session = ort.InferenceSession(str(repo / "carseg_onnx" / "1" / "model.onnx"))

    class Input:
        def __init__(self, name: str, shape: list[int], dtype: str) -> None:
            assert name == "input" and dtype == "FP32"
            self.shape = shape

        def set_data_from_numpy(self, x: np.ndarray) -> None:
            assert list(x.shape) == self.shape
            self.x = x

    class Client:
        def __init__(self, url: str) -> None:
            pass

        def infer(self, model: str, inputs: list[Input], outputs: list[str]):
            assert model == "carseg_onnx" and outputs == ["logits"]
            y = session.run(["logits"], {"input": inputs[0].x})[0]
            return types.SimpleNamespace(as_numpy=lambda name: y)

    fake = types.ModuleType("tritonclient.grpc")
    fake.InferenceServerClient, fake.InferInput = Client, Input
    fake.InferRequestedOutput = lambda name: name
    monkeypatch.setitem(__import__("sys").modules, "tritonclient.grpc", fake)
    monkeypatch.setattr(tritonclient, "grpc", fake, raising=False)
    photo = sorted((tiny_data / "train").glob("*.jpg"))[0]
    shutil.copy(photo, repo / "car.jpg")
    monkeypatch.chdir(repo)
    scope: dict = {}
    rgb = read_rgb(photo)
    for snippet, refine in ((plain, False), (refined, True)):
        exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README, as written
        mask = np.asarray(Image.open(repo / "car_mask.png"))
        assert set(np.unique(mask)) <= {0, 255}  # thresholded after the resize: no grey
        ref = ReferencePredictor(tiny_artifacts, backend="onnx", refine=refine)
        want = ref.predict(rgb) > 0
        got = mask > 0
        assert got.shape == want.shape
        assert (got & want).sum() / max(1, (got | want).sum()) >= 0.99, refine
    alpha = np.asarray(Image.open(repo / "car_alpha.png"))
    want = ReferencePredictor(tiny_artifacts, backend="onnx").predict_matte(rgb)[1]
    assert np.abs(alpha.astype(int) - want.astype(int)).max() <= 1
