"""Every way to run the same trained model, behind one interface.

A backend takes a normalized float32 batch [N,3,S,S] on the benchmark's device and returns
logits [N,1,S,S]. One that cannot run here says why (`skip_reason`), and the harness lists
it as skipped instead of dropping it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def load_manifest(artifacts: Path) -> dict[str, Any]:
    path = artifacts / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (run `python -m export all` first)")
    return json.loads(path.read_text())


def eager_model(manifest: dict[str, Any]) -> torch.nn.Module:
    """The trained model rebuilt from the run the artifacts came from, refusing a checkpoint
    that changed since export (its artifacts would no longer be the same model)."""
    from export.source import build_eager, load_source

    src = manifest["source"]
    source = load_source(src["logdir"], src["checkpoint"])
    if source.checkpoint_sha256 != src.get("checkpoint_sha256"):
        raise ValueError(f"{source.checkpoint}: changed since export (sha256 "
                         f"{source.checkpoint_sha256[:12]}..., manifest says "
                         f"{str(src.get('checkpoint_sha256'))[:12]}...); re-export first")
    return build_eager(source)


class Backend:
    name = "backend"
    precision = "fp32"

    def __init__(self, artifacts: Path, manifest: dict[str, Any], device: torch.device) -> None:
        self.artifacts, self.manifest, self.device = artifacts, manifest, device

    def skip_reason(self) -> str | None:
        return None

    def load(self) -> None:
        """Load once; not timed."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def artifact(self, key: str) -> Path | None:
        entry = self.manifest.get("artifacts", {}).get(key)
        return self.artifacts / entry["file"] if entry else None


class Eager(Backend):
    name = "eager"

    def __init__(self, *a: Any, half: bool = False, channels_last: bool = False) -> None:
        super().__init__(*a)
        self.half, self.channels_last = half, channels_last
        if half:
            self.name, self.precision = "eager-fp16", "fp16"
        if channels_last:
            self.name += "-cl"

    def skip_reason(self) -> str | None:
        if self.half and self.device.type != "cuda":
            return "fp16 eager is a CUDA path (CPU fp16 convolutions are emulated and slow)"
        return None

    def load(self) -> None:
        m = eager_model(self.manifest).to(self.device)
        if self.half:
            m = m.half()
        if self.channels_last:
            m = m.to(memory_format=torch.channels_last)
        self.model = m

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.half:
            x = x.half()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class Compiled(Eager):
    """torch.compile (Inductor): what a Python user would reach for."""

    name = "torch.compile"

    def __init__(self, *a: Any, mode: str | None = None, enabled: bool = True) -> None:
        super().__init__(*a, half=False, channels_last=False)
        self.mode, self.enabled = mode, enabled
        # reduce-overhead: Inductor's kernels replayed in a CUDA graph (DESIGN.md's 0.348 ms)
        self.name = "torch.compile+graphs" if mode == "reduce-overhead" else "torch.compile"

    def skip_reason(self) -> str | None:
        if not self.enabled:
            return "disabled by --no-compile"
        if shutil.which("g++") is None and shutil.which("cc") is None:
            return "torch.compile on the CPU needs a C++ compiler"
        return None

    def load(self) -> None:
        super().load()
        if self.device.type == "cuda":
            self.model = self.model.half()
            self.half, self.precision = True, "fp16"
        self.model = torch.compile(self.model, mode=self.mode, dynamic=False)


class TorchScript(Backend):
    name = "torchscript"

    def skip_reason(self) -> str | None:
        p = self.artifact("torchscript")
        return None if p and p.is_file() else "no TorchScript artifact in the manifest"

    def load(self) -> None:
        entry = self.manifest["artifacts"]["torchscript"]
        self.precision = entry.get("precision", "fp32")
        self.model = torch.jit.load(str(self.artifact("torchscript")), map_location=self.device)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp16":
            x = x.half()
        return self.model(x)


class OnnxRuntime(Backend):
    name = "onnxruntime"

    def skip_reason(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime not installed"
        p = self.artifact("onnx")
        if not (p and p.is_file()):
            return "no ONNX artifact in the manifest"
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in \
                ort.get_available_providers():
            return "onnxruntime has no CUDA provider (install the `gpu` extra: onnxruntime-gpu)"
        return None

    def load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = torch.get_num_threads()
        providers = (["CUDAExecutionProvider"] if self.device.type == "cuda" else []) + \
            ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.artifact("onnx")), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.precision = self.manifest["artifacts"]["onnx"].get("precision", "fp32")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().cpu().numpy()
        if self.precision == "fp16":
            a = a.astype("float16")
        out = self.session.run(None, {self.input_name: a})[0]
        return torch.from_numpy(out)


class AOTInductor(Backend):
    name = "aoti"

    def skip_reason(self) -> str | None:
        p = self.artifact("aoti")
        if not (p and p.is_file()):
            return "no AOTInductor artifact in the manifest"
        entry = self.manifest["artifacts"]["aoti"]
        if entry.get("device", "cpu") != self.device.type:
            return f"the .pt2 was compiled for {entry.get('device')}, not {self.device.type}"
        return None

    def load(self) -> None:
        import torch._inductor

        self.model = torch._inductor.aoti_load_package(str(self.artifact("aoti")))
        self.precision = self.manifest["artifacts"]["aoti"].get("precision", "fp32")

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp16":
            x = x.half()
        return self.model(x)


def bindings_skip_reason() -> str:
    """Why the model-only table has no bindings row."""
    try:
        import carseg._native  # noqa: F401
    except ImportError as e:
        return f"carseg._native not built ({e})"
    return ("the bindings take photos, not normalized tensors: they are timed end to end "
            "(carseg cutout --backend native; see the test_native latency figures)")


def cpp_bench(artifacts: Path, device: torch.device, batches: list[int], iters: int,
              warmup: int, size: int, graphs: bool = True, backend: str = "auto",
              extra: Sequence[str] = ()) -> dict[str, Any] | str:
    """carseg_infer bench --json [extra flags]: returns its JSON, or the reason it could not
    run."""
    exe = shutil.which("carseg_infer", path=str(Path(sys.executable).parent)) or \
        shutil.which("carseg_infer")
    if exe is None:
        return "carseg_infer not built"
    out = artifacts / ".bench_cpp.json"
    cmd = [exe, "bench", "--model", str(artifacts), "--device", device.type,
           "--batch", ",".join(map(str, batches)), "--iters", str(iters),
           "--warmup", str(warmup), "--size", str(size), "--json", str(out),
           "--backend", backend, *extra]
    if not graphs:
        cmd.append("--no-graphs")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return f"carseg_infer bench failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    data = json.loads(out.read_text())
    out.unlink()
    return data


def python_backends(artifacts: Path, manifest: dict[str, Any], device: torch.device,
                    compile_: bool = True) -> list[Backend]:
    a = (artifacts, manifest, device)
    backends: list[Backend] = [Eager(*a), Eager(*a, channels_last=True)]
    if device.type == "cuda":
        backends.append(Eager(*a, half=True, channels_last=True))
    backends += [TorchScript(*a), OnnxRuntime(*a), AOTInductor(*a), Compiled(*a, enabled=compile_)]
    if device.type == "cuda":
        backends.append(Compiled(*a, mode="reduce-overhead", enabled=compile_))
    return backends
