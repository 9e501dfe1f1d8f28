"""Artifact folders exported once a session and shared by the export and inference tests.

No tests here: pytest keeps a session fixture per module that defines it, so the folders are
cached under the session's base temp folder instead, and each module's fixture calls these.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FP32_ATOL, FP32_IOU = 1e-4, 0.999
BATCHES = (1, 4)
SIZES = ((64, 64), (32, 96))  # the tiny run's image size, and another multiple of 32


def exported(tmp_path_factory: pytest.TempPathFactory, logdir: Path, name: str,
             formats: tuple[str, ...], **kwargs) -> Path:
    """basetemp/<name>, holding `formats` exported from `logdir` (exported on first use)."""
    from export.api import export_artifact

    out = tmp_path_factory.getbasetemp() / name
    done = out / ".complete"
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        for fmt in formats:
            export_artifact(fmt, logdir, out, **kwargs)
        done.write_text("\n".join(formats))
    return out


def copy_of(folder: Path, dest: Path) -> Path:
    """A private copy of an artifact folder, for tests that change it."""
    target = dest / folder.name
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(".complete"))
    return target


def eager_model(logdir: Path):
    from export.source import build_eager, load_source

    return build_eager(load_source(logdir, "best"))


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {f"b{b}_{h}x{w}": torch.randn(b, 3, h, w, generator=g)
            for h, w in SIZES for b in BATCHES}


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


# Runs in a fresh interpreter with nothing of carseg imported: only the consumer's loaders.
FRESH_SCRIPT = r"""
import sys, numpy as np
backend, path, npz_in, npz_out = sys.argv[1:5]
xs = dict(np.load(npz_in))
out = {}
if backend == "torchscript":
    import torch
    m = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        out = {k: m(torch.from_numpy(v)).numpy() for k, v in xs.items()}
elif backend == "onnx":
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["input"], s.get_inputs()
    assert [o.name for o in s.get_outputs()] == ["logits"], s.get_outputs()
    out = {k: s.run(["logits"], {"input": v})[0] for k, v in xs.items()}
elif backend == "aoti":
    import torch
    r = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        out = {k: r(torch.from_numpy(v)).numpy() for k, v in xs.items()}
assert "carseg" not in sys.modules and "export" not in sys.modules
np.savez(npz_out, **out)
"""


def check_fresh_process_parity(backend: str, artifact: Path, logdir: Path,
                               tmp_path: Path) -> dict[str, float]:
    """Load `artifact` in a new interpreter, run batch 1 and 4 at two sizes, compare to eager."""
    xs = inputs()
    np.savez(tmp_path / "in.npz", **{k: v.numpy() for k, v in xs.items()})
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_SCRIPT, backend, str(artifact), str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300,
        cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(np.load(tmp_path / "out.npz"))
    model = eager_model(logdir)
    worst = {}
    assert sorted(got) == sorted(xs)
    for k, x in xs.items():
        with torch.no_grad():
            ref = model(x)
        y = torch.from_numpy(got[k])
        assert y.shape == ref.shape == (x.shape[0], 1, *x.shape[2:]), k
        diff = (y - ref).abs().max().item()
        assert not math.isnan(diff), k
        assert diff <= FP32_ATOL, f"{backend} {k}: max |diff| {diff:.2e} > {FP32_ATOL}"
        m_iou = iou(y > 0, ref > 0)
        assert m_iou >= FP32_IOU, f"{backend} {k}: mask IoU {m_iou:.5f}"
        worst[k] = diff
    return worst


def manifest_json(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())
