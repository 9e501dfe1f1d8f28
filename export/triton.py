"""`python -m export triton`: a Triton Inference Server model repository from artifacts.

    REPO/carseg_onnx/config.pbtxt          onnxruntime backend
    REPO/carseg_onnx/1/model.onnx
    REPO/carseg_torchscript/config.pbtxt   pytorch_libtorch backend
    REPO/carseg_torchscript/1/model.pt
    REPO/manifest.json                     the artifacts' manifest (preprocessing, threshold)
    REPO/README.md                         how to start tritonserver and call it

Each config.pbtxt is built as Triton's own ModelConfig protobuf (from tritonclient) and
written in its text format, so it parses by construction; names, data types and dims come
from the model files themselves, not from assumptions. Only verified artifacts (parity
recorded and passed, sha256 matching) are taken.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from carseg.errors import CarsegError
from carseg.io.files import prepare_out_dir, write_atomic
from export.manifest import MANIFEST_NAME, load_manifest, sha256_file

log = logging.getLogger(__name__)

MODEL_NAMES = {"onnx": "carseg_onnx", "torchscript": "carseg_torchscript"}
# Triton's pytorch backend names tensors by position: INPUT__0, OUTPUT__0.
TS_INPUT, TS_OUTPUT = "INPUT__0", "OUTPUT__0"


def _pb():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise CarsegError(f"tritonclient is not installed ({e}); install the `scale` extra: "
                          f"pip install 'carseg[scale]'") from None
    return model_config_pb2, text_format


def _onnx_io(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, output) of the ONNX graph: name, elem type, dims without the batch dim."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(v) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": v.name, "elem_type": onnx.TensorProto.DataType.Name(t.elem_type),
                "dims": dims}

    inits = {i.name for i in model.graph.initializer}
    inputs = [describe(v) for v in model.graph.input if v.name not in inits]
    outputs = [describe(v) for v in model.graph.output]
    if len(inputs) != 1 or len(outputs) != 1:
        raise CarsegError(f"{path}: expected one input and one output, got "
                          f"{[i['name'] for i in inputs]} -> {[o['name'] for o in outputs]}")
    return inputs[0], outputs[0]


_ONNX_TO_TRITON = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16"}
_DTYPE_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def _config(name: str, backend: str, inp: dict[str, Any], out: dict[str, Any], max_batch: int,
            instances: int, kind: str, platform: str | None = None):
    pb, _ = _pb()
    c = pb.ModelConfig(name=name, backend=backend, max_batch_size=max_batch)
    if platform:
        c.platform = platform
    for spec, field in ((inp, c.input), (out, c.output)):
        t = field.add()
        t.name = spec["name"]
        t.data_type = pb.DataType.Value(spec["data_type"])
        t.dims.extend(spec["dims"])
    c.dynamic_batching.max_queue_delay_microseconds = 2000
    c.dynamic_batching.preferred_batch_size.extend(
        [b for b in (4, 8, 16, 32) if b <= max_batch] or [max_batch])
    g = c.instance_group.add()
    g.count = instances
    g.kind = pb.ModelInstanceGroup.KIND_GPU if kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    return c


def _write_config(config, path: Path) -> None:
    _, text_format = _pb()
    write_atomic(path, text_format.MessageToString(config))


def build_repository(artifacts: Path, out: Path, *, max_batch: int = 16, instances: int = 1,
                     kind: str = "gpu", require_verified: bool = True) -> list[str]:
    """Write the repository; returns the model names written."""
    _pb()
    if max_batch < 1 or instances < 1:
        raise ValueError(f"--max-batch and --instances must be >= 1, got {max_batch}, "
                         f"{instances}")
    if kind not in ("gpu", "cpu"):
        raise ValueError(f"--kind: expected gpu or cpu, got {kind!r}")
    artifacts = Path(artifacts)
    manifest = load_manifest(artifacts)
    present = [k for k in MODEL_NAMES if k in manifest.artifacts]
    if not present:
        raise CarsegError(f"{artifacts / MANIFEST_NAME}: no onnx or torchscript artifact to "
                          f"serve (has {sorted(manifest.artifacts)})")
    for key in present:
        entry = manifest.artifacts[key]
        path = artifacts / entry["file"]
        if sha256_file(path) != entry["sha256"]:
            raise CarsegError(f"{path}: sha256 does not match {MANIFEST_NAME}; re-export it")
        parity = entry.get("parity")
        if require_verified and not (parity and parity.get("passed")):
            raise CarsegError(f"{path}: not verified (run `python -m export verify "
                              f"{artifacts}` first)")
    dtype = manifest.input["dtype"]
    out = prepare_out_dir(out)
    size = manifest.spec.size
    written = []
    for key in present:
        entry = manifest.artifacts[key]
        src = artifacts / entry["file"]
        name = MODEL_NAMES[key]
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "1").mkdir(parents=True)
        spatial = -1 if entry["dynamic"]["spatial"] else size
        if key == "onnx":
            gi, go = _onnx_io(src)
            inp = {"name": gi["name"], "data_type": _ONNX_TO_TRITON[gi["elem_type"]],
                   "dims": gi["dims"][1:]}
            outp = {"name": go["name"], "data_type": _ONNX_TO_TRITON[go["elem_type"]],
                    "dims": go["dims"][1:]}
            config = _config(name, "onnxruntime", inp, outp, max_batch, instances, kind)
            shutil.copyfile(src, folder / "1" / "model.onnx")
        else:
            t = _DTYPE_TO_TRITON[dtype]
            inp = {"name": TS_INPUT, "data_type": t, "dims": [3, spatial, spatial]}
            outp = {"name": TS_OUTPUT, "data_type": t, "dims": [1, spatial, spatial]}
            config = _config(name, "pytorch", inp, outp, max_batch, instances, kind,
                             platform="pytorch_libtorch")
            shutil.copyfile(src, folder / "1" / "model.pt")
        _write_config(config, folder / "config.pbtxt")
        written.append(name)
        log.info("triton: wrote %s (%s)", folder, key)
    shutil.copyfile(artifacts / MANIFEST_NAME, out / MANIFEST_NAME)
    write_atomic(out / "README.md", _readme(written, manifest.to_json()))
    return written


def _readme(models: list[str], manifest: dict[str, Any]) -> str:
    pre = manifest["preprocessing"]
    model = models[0]
    io = ("input", "logits") if model == "carseg_onnx" else (TS_INPUT, TS_OUTPUT)
    np_dtype = "np.float16" if manifest["input"]["dtype"] == "float16" else "np.float32"
    triton_dtype = "FP16" if manifest["input"]["dtype"] == "float16" else "FP32"
    return f"""# carseg model repository for Triton Inference Server

Models: {', '.join(f'`{m}`' for m in models)}. `manifest.json` beside them says how to feed
them: longest side to {pre['size']}, pad bottom/right to {pre['size']}x{pre['size']} with
{pre['pad_value']}, normalize with mean {pre['mean']} and std {pre['std']} (pixels / 255),
RGB, NCHW; the output is logits, a pixel is car where sigmoid(logit) >
{manifest['output']['threshold']}.

Start the server (its container image has tritonserver):

```bash
tritonserver --model-repository=$(pwd)
```

Call it with `tritonclient` (pip install 'tritonclient[grpc]'), doing the manifest's
pre- and post-processing (half-pixel bilinear resizes without antialiasing, as carseg does:
cv2.INTER_LINEAR on float pixels; the logits are resized to the photo, then thresholded):

```python
import json

import cv2
import numpy as np
import tritonclient.grpc as grpcclient

m = json.load(open("manifest.json"))
pre = m["preprocessing"]
S = pre["size"]
photo = cv2.cvtColor(cv2.imread("car.jpg"), cv2.COLOR_BGR2RGB)
h, w = photo.shape[:2]
scale = S / max(h, w)
nh, nw = min(S, max(1, round(h * scale))), min(S, max(1, round(w * scale)))
x = cv2.resize(photo.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
x = np.pad(x, ((0, S - nh), (0, S - nw), (0, 0)), constant_values=pre["pad_value"])
x = (x / pre["max_pixel_value"] - np.array(pre["mean"])) / np.array(pre["std"])
x = x.transpose(2, 0, 1)[None].astype({np_dtype})

client = grpcclient.InferenceServerClient("localhost:8001")
inp = grpcclient.InferInput("{io[0]}", list(x.shape), "{triton_dtype}")
inp.set_data_from_numpy(x)
res = client.infer("{model}", [inp], outputs=[grpcclient.InferRequestedOutput("{io[1]}")])
logits = res.as_numpy("{io[1]}")[0, 0, :nh, :nw].astype(np.float32)
logits = cv2.resize(logits, (w, h), interpolation=cv2.INTER_LINEAR)  # to the photo's size
mask = 1 / (1 + np.exp(-logits)) > m["output"]["threshold"]
cv2.imwrite("car_mask.png", mask.astype(np.uint8) * 255)  # 0/255, the photo's size
```
""" + (_REFINE_README.format(out=io[1]) if manifest["output"].get("refine") else "")


_REFINE_README = """
That is the model's own mask. carseg's runners refine it at the photo's full resolution, as
the manifest's `output.refine` says (a colour guided filter of the probabilities: a crisper
edge and a soft alpha matte; carseg's docs/manifest.md has the algorithm). With carseg
installed beside the client, the same refinement of the logits above:

```python
import torch
from carseg.runtime import refine

spec = refine.RefineSpec.from_json(m["output"]["refine"])
(gh, gw), _ = spec.grid(h, w, S)  # the grid the filter is fitted on
small = res.as_numpy("{out}")[0, 0, :nh, :nw].astype(np.float32)
small = cv2.resize(small, (gw, gh), interpolation=cv2.INTER_LINEAR)
rgb = torch.from_numpy(photo)
fit = refine.fit(rgb, torch.from_numpy(small), spec, m["output"]["threshold"], S)
mask, alpha = refine.matte(rgb, fit)
cv2.imwrite("car_mask.png", mask.numpy() * 255)  # the refined mask
cv2.imwrite("car_alpha.png", refine.alpha_u8(alpha, mask).numpy())  # its soft matte
```
"""


def describe_repository(repo: Path) -> dict[str, Any]:
    """Each config.pbtxt parsed back through Triton's schema (for tests and checks)."""
    pb, text_format = _pb()
    out = {}
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        c = text_format.Parse(cfg_path.read_text(), pb.ModelConfig())
        out[c.name] = c
    return out


def manifest_json(repo: Path) -> dict[str, Any]:
    return json.loads((repo / MANIFEST_NAME).read_text())
