"""One function per artifact format: write the file (to a temp name) and say what it is.

Each writer takes the eager model (eval, on its device and dtype) and a temporary path, and
returns the manifest fields it knows ("dynamic", "opset"). The caller (export.api) renames
the file into place, hashes it and records it in the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from carseg.errors import CarsegError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 18
MAX_BATCH = 1024
MAX_SIDE_BLOCKS = 256  # spatial sides up to 32 * 256 = 8192 pixels
SMOKE_BATCH, SMOKE_HW = 3, (64, 96)  # a cheap non-square, non-default shape


def example_input(size: int, device: torch.device, dtype: torch.dtype,
                  batch: int = 2) -> torch.Tensor:
    # batch 2, not 1: torch.export specialises a dimension whose example value is 1
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g).to(device=device, dtype=dtype)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.jit.* and the ONNX exporter warn about their own deprecation; keep logs readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _smoke_dynamic(run, size: int, device: torch.device, dtype: torch.dtype,
                   what: str) -> dict[str, bool]:
    """Which of batch and H/W the written artifact really accepts (output shape checked)."""
    def works(batch: int, hw: tuple[int, int]) -> bool:
        x = torch.zeros(batch, 3, *hw, device=device, dtype=dtype)
        try:
            y = run(x)
        except Exception as e:  # a shape baked into the graph fails in many ways
            log.debug("%s: batch %d at %s fails: %s", what, batch, hw, e)
            return False
        return tuple(y.shape) == (batch, 1, *hw)

    batch_ok = works(SMOKE_BATCH, (size, size)) if size <= 512 else works(SMOKE_BATCH,
                                                                            SMOKE_HW)
    spatial_ok = works(1, SMOKE_HW)
    if not batch_ok:
        raise CarsegError(f"{what}: the written model does not accept batch {SMOKE_BATCH}")
    if not spatial_ok:
        log.warning("%s: not spatially dynamic; it runs at its export size only", what)
    return {"batch": batch_ok, "spatial": spatial_ok}


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Convolutions and matmuls in true fp32, not TF32 (cuDNN's default on Ampere and later),
    until the block ends. A trace records the flag in each convolution
    (`aten::_convolution(..., allow_tf32)`), so an fp32 TorchScript traced under it runs in
    fp32 wherever it is loaded, C++ included: the second GPU run (H200) found a trace made
    with the default flag 6.2e-3 from eager fp32 on CUDA, with TF32 off at run time."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---- TorchScript ------------------------------------------------------------------------------
def write_torchscript(model: torch.nn.Module, path: Path, size: int, device: torch.device,
                      dtype: torch.dtype, method: str = "trace") -> dict[str, Any]:
    x = example_input(size, device, dtype)
    with _quiet(), torch.no_grad(), no_tf32():
        if method == "trace":
            module = torch.jit.trace(model, x, check_trace=False)
        elif method == "script":
            try:
                module = torch.jit.script(model)
            except Exception as e:
                raise CarsegError(
                    f"torch.jit.script cannot compile {type(model).__name__}: "
                    f"{str(e).strip().splitlines()[0]}; use --method trace") from None
        else:
            raise ValueError(f"--method: expected trace or script, got {method!r}")
        module = torch.jit.freeze(module.eval())
        torch.jit.save(module, str(path))
        loaded = torch.jit.load(str(path), map_location=device)
        dynamic = _smoke_dynamic(loaded, size, device, dtype, "TorchScript")
    return {"dynamic": dynamic}


# ---- ONNX -------------------------------------------------------------------------------------
def opset_range(exporter: str) -> tuple[int, int]:
    """Opsets the installed torch (and onnx) can write with `exporter`."""
    import onnx

    try:
        from torch.onnx import _constants as c

        top = int(c.ONNX_MAX_OPSET)
        ts_top = int(c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
        ts_low = int(c.ONNX_MIN_OPSET)
    except (ImportError, AttributeError):  # private module moved: stay conservative
        top, ts_top, ts_low = DEFAULT_OPSET, 17, 7
    top = min(top, onnx.defs.onnx_opset_version())
    if exporter == "dynamo":
        return DYNAMO_MIN_OPSET, top
    if exporter == "torchscript":
        return ts_low, min(ts_top, top)
    raise ValueError(f"--exporter: expected dynamo or torchscript, got {exporter!r}")


def check_opset(opset: int, exporter: str) -> None:
    low, high = opset_range(exporter)
    if not low <= opset <= high:
        raise CarsegError(
            f"--opset {opset}: torch {torch.__version__.split('+')[0]} cannot write it with "
            f"the {exporter} exporter (it writes opsets {low} to {high})")


def write_onnx(model: torch.nn.Module, path: Path, size: int, device: torch.device,
               dtype: torch.dtype, opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
               simplify: bool = False) -> dict[str, Any]:
    import onnx

    check_opset(opset, exporter)
    x = example_input(size, device, dtype)
    try:
        with _quiet(), torch.no_grad():
            if exporter == "dynamo":
                batch = torch.export.Dim("N", min=1, max=MAX_BATCH)
                h = torch.export.Dim("H32", min=1, max=MAX_SIDE_BLOCKS)
                w = torch.export.Dim("W32", min=1, max=MAX_SIDE_BLOCKS)
                torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=opset,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_shapes=({0: batch, 2: 32 * h, 3: 32 * w},),
                                  external_data=False, verbose=False, report=False)
            else:
                axes = {0: "N", 2: "H", 3: "W"}
                torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": axes, "logits": axes},
                                  do_constant_folding=True)
    except CarsegError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CarsegError(f"ONNX export ({exporter} exporter, opset {opset}) failed: "
                          f"{first}") from None
    proto = onnx.load(str(path), load_external_data=False)
    written = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if written != opset:
        raise CarsegError(f"--opset {opset}: the exporter wrote opset {written} instead "
                          f"(conversion to {opset} failed)")
    if simplify:
        try:
            import onnxsim  # type: ignore[import-not-found]
        except ImportError:
            log.warning("--simplify: onnxsim is not installed; ONNX graph left as exported "
                        "(pip install onnxsim to simplify)")
        else:
            log.info("simplifying the ONNX graph with onnxsim %s", onnxsim.__version__)
            simplified, ok = onnxsim.simplify(proto)
            if not ok:
                raise CarsegError("onnxsim: the simplified graph failed its own check")
            onnx.save(simplified, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise CarsegError(f"ONNX checker refused the exported model: "
                          f"{str(e).strip().splitlines()[0]}") from None
    dynamic = _smoke_dynamic(_ort_runner(path, device), size, device, dtype, "ONNX")
    return {"dynamic": dynamic, "opset": opset}


def onnx_run_device(device: torch.device) -> torch.device:
    """Where ONNX Runtime here can run a model exported for `device`: the CPU when this
    onnxruntime has no CUDA provider (an ONNX file is the same for both; the check is of the
    file, not of the provider). The GPU image's onnxruntime is the CPU build."""
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        log.warning("no CUDA device here; checking the ONNX file on the CPU")
        return torch.device("cpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        log.warning("onnxruntime has no CUDA provider here; checking the ONNX file on the CPU")
        return torch.device("cpu")
    return device


def _ort_runner(path: Path, device: torch.device):
    """The reference predictor's ONNX Runtime runner, where onnx_run_device says."""
    from carseg.runtime.reference import load_backend

    where = onnx_run_device(device)
    run = load_backend(path, "onnx", where)
    return run if where == device else (lambda x: run(x.to(where)))


# ---- AOTInductor ------------------------------------------------------------------------------
# CARSEG_AOTI_FREEZING=0 compiles CPU packages without weight freezing (to measure the knob).
AOTI_FREEZING = os.environ.get("CARSEG_AOTI_FREEZING", "1") != "0"

def compile_aoti(model: torch.nn.Module, path: Path, size: int, device: torch.device,
                 dtype: torch.dtype) -> dict[str, Any]:
    """torch.export with dynamic batch and H/W, then AOTInductor into a .pt2 package.

    Runs in the process that calls it: use `write_aoti`, which calls this in a child process.
    """
    x = example_input(size, device, dtype)
    batch = torch.export.Dim("N", min=1, max=MAX_BATCH)
    h = torch.export.Dim("H32", min=1, max=MAX_SIDE_BLOCKS)
    w = torch.export.Dim("W32", min=1, max=MAX_SIDE_BLOCKS)
    t0 = time.monotonic()
    with torch.no_grad():
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch, 2: 32 * h,
                                                               3: 32 * w},))
    log.info("torch.export: %.1f s; compiling with AOTInductor for %s (tens of seconds)",
             time.monotonic() - t0, device)
    t0 = time.monotonic()
    # CPU: freeze the weights into the graph, so that Inductor folds them and prepacks them
    # for oneDNN's convolutions (measured: see benchmarks/results, carseg_infer/aoti).
    configs = {"freezing": True} if device.type == "cpu" and AOTI_FREEZING else {}
    with torch.no_grad():  # Inductor freezes only a graph compiled without grad
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path),
                                                 inductor_configs=configs)
    log.info("AOTInductor compile: %.1f s (%.1f MB); loading the package to check it",
             time.monotonic() - t0, path.stat().st_size / 1e6)
    runner = torch._inductor.aoti_load_package(str(path))
    log.info("AOTInductor: loaded; running it on batch and H/W sizes")
    with torch.no_grad():
        dynamic = _smoke_dynamic(runner, size, device, dtype, "AOTInductor")
    return {"dynamic": dynamic}


def write_aoti(logdir: Path, checkpoint: Path, path: Path, device: torch.device,
               precision: str, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Compile in a child process (`python -m export aoti-worker`): a crash inside the
    compiler (seen: a segfault in fp16 on a GPU) becomes a CarsegError here."""
    import json

    result = path.with_name(path.name + ".json")
    cmd = [sys.executable, "-m", "export", "aoti-worker", "--logdir", str(logdir),
           "--checkpoint", str(checkpoint), "--device", str(device), "--precision", precision,
           "--package", str(path), "--result", str(result)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    tail: deque[str] = deque(maxlen=200)  # room for a faulthandler and a native stack

    def pump(stream) -> None:
        for line in stream:
            line = line.rstrip()
            if not line:
                continue
            tail.append(line)
            if line.startswith("aoti-worker:"):
                log.info("  %s", line)
            else:
                log.debug("  %s", line)

    log.info("AOTInductor: compiling in a child process")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=root)
        log.debug("aoti-worker pid %d: %s", proc.pid, " ".join(cmd))
        reader = threading.Thread(target=pump, args=(proc.stderr,), daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CarsegError(f"AOTInductor compile took longer than {timeout_s:.0f} s; "
                              f"stopped it") from None
        except BaseException:  # KeyboardInterrupt: do not leave a compiler running
            proc.kill()
            proc.wait()
            raise
        reader.join(timeout=5)
        last = "\n    ".join(tail) or "(no output)"
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = f"signal {-rc}"
            raise CarsegError(f"AOTInductor compile crashed ({sig}) in its child process; no "
                              f"model.pt2 written. Last output:\n    {last}")
        if rc != 0:
            errors = [ln for ln in tail if ln.startswith("aoti-worker: error:")]
            why = errors[-1].split("error: ", 1)[1] if errors else f"exit status {rc}"
            raise CarsegError(f"AOTInductor compile failed: {why}" +
                              ("" if errors else f". Last output:\n    {last}"))
        try:
            return json.loads(result.read_text())
        except (OSError, ValueError) as e:
            raise CarsegError(f"AOTInductor child process left no result ({e})") from None
    finally:
        result.unlink(missing_ok=True)
