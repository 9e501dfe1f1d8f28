"""Fixtures for the C++ tests, written by the Python reference (carseg.runtime.preprocess).

Writes into --out: photos (PNG, lossless, plus raw RGB), carseg.runtime.preprocess outputs as raw
float32, post-processing references, resized-shape cases, and a tiny artifact folder
(a frozen TorchScript U-Net/resnet18 with random weights: `python -m export trace` on a
minimal logdir when the exporter is there, else traced here with a manifest per docs/manifest.md)
with the Python reference masks for it. Skips the work when the stamp matches this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

SIZES = [(37, 53), (256, 256), (300, 200), (1, 7), (480, 640), (1000, 333), (128, 128), (255, 511)]


def photo(h: int, w: int, seed: int):
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(1, h // 16), max(1, w // 16), generator=g) * 255
    smooth = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    noise = torch.randint(-20, 21, (3, h, w), generator=g)
    img = (smooth + noise).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return np.ascontiguousarray(img.numpy())


def write_raw(path: Path, t) -> None:
    import torch

    path.write_bytes(t.detach().cpu().contiguous().numpy().tobytes()
                     if isinstance(t, torch.Tensor) else t.tobytes())


def export_with_tool(out: Path, model, spec, threshold: float, model_dir: Path) -> str | None:
    """`python -m export trace` on a minimal logdir holding this model; None when unavailable."""
    import torch
    import yaml

    if not (ROOT / "export" / "__main__.py").is_file():
        return None
    logdir = out / "logdir"
    if logdir.exists():
        shutil.rmtree(logdir)
    (logdir / "checkpoints").mkdir(parents=True)
    torch.save(model.state_dict(), logdir / "checkpoints" / "model.best.pth")
    config = {
        "shared": {"image_size": spec.size, "mean": list(spec.mean), "std": list(spec.std),
                   "threshold": threshold},
        "run": [{"_call_": "train", "model": {
            "_target_": "carseg.train.models.build_model", "_mode_": "call", "arch": "Unet",
            "encoder_name": "resnet18", "classes": 1, "encoder_weights": None}}],
    }
    (logdir / "config.resolved.yml").write_text(yaml.safe_dump(config))
    r = subprocess.run([sys.executable, "-m", "export", "trace", "--logdir", str(logdir),
                        "--out", str(model_dir), "-q"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 or not (model_dir / "manifest.json").is_file():
        sys.stderr.write(f"make_fixtures: python -m export trace failed (rc {r.returncode}), "
                         f"tracing here instead:\n{r.stderr[-2000:]}\n")
        if model_dir.exists():
            shutil.rmtree(model_dir)
        return None
    return "python -m export trace"


def write_own_artifact(model, spec, threshold: float, model_dir: Path) -> None:
    import torch

    model_dir.mkdir(parents=True)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, spec.size, spec.size))
    frozen = torch.jit.freeze(traced)
    ts_path = model_dir / "model.torchscript.pt"
    frozen.save(str(ts_path))
    data = ts_path.read_bytes()
    manifest = {
        "schema_version": 1,
        "carseg_version": "0.1.0",
        "created": "fixture",
        "model": {"arch": "Unet", "encoder_name": "resnet18", "classes": 1, "in_channels": 3,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "source": {"logdir": None, "checkpoint": None, "note": "random weights (test fixture)"},
        "preprocessing": spec.to_json(),
        "input": {"name": "input", "dtype": "float32", "shape": ["N", 3, spec.size, spec.size]},
        "output": {"name": "logits", "dtype": "float32", "shape": ["N", 1, spec.size, spec.size],
                   "kind": "logits", "activation": "sigmoid", "threshold": threshold},
        "artifacts": {"torchscript": {
            "file": ts_path.name, "format": "torchscript", "precision": "fp32", "device": "cpu",
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "dynamic": {"batch": True, "spatial": True}, "export_seconds": None, "parity": None}},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    out: Path = args.out
    # Regenerate when this script, the reference preprocessing, the models or the exporter change.
    h = hashlib.sha256()
    for f in [Path(__file__), *sorted((ROOT / "python" / "carseg" / "runtime").glob("*.py")),
              ROOT / "python" / "carseg" / "train" / "models.py",
              *sorted((ROOT / "export").glob("*.py"))]:
        if f.is_file():
            h.update(f.read_bytes())
    stamp = h.hexdigest()
    if (out / "stamp").is_file() and (out / "stamp").read_text() == stamp:
        return 0
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from PIL import Image

    from carseg.runtime.preprocess import (
        PreprocessSpec,
        mask_from_logits,
        postprocess_logits,
        preprocess,
        preprocess_batch,
    )
    from carseg.train.models import build_model

    torch.manual_seed(0)
    specs = {
        "a": PreprocessSpec(),
        "b": PreprocessSpec(size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), pad_value=114),
    }
    images, tensors = [], []
    for i, (h, w) in enumerate(SIZES):
        name = f"photo_{h}x{w}"
        arr = photo(h, w, i)
        Image.fromarray(arr).save(out / f"{name}.png")
        write_raw(out / f"{name}.rgb", arr)
        t = torch.from_numpy(arr)
        tensors.append(t)
        entry = {"name": name, "h": h, "w": w, "resized": {}}
        for key, spec in specs.items():
            entry["resized"][key] = list(spec.resized_shape(h, w))
            write_raw(out / f"{name}.pre_{key}.f32", preprocess(t, spec))
        images.append(entry)

    # A CMYK JPEG (Adobe's inverted CMYK, as Pillow and Photoshop write it) and the RGB that
    # carseg.io.images (Pillow) decodes from it: libcarseg must give the same pixels.
    from carseg.io.images import read_rgb

    Image.fromarray(photo(48, 64, 9)).convert("CMYK").save(out / "cmyk.jpg", quality=90)
    write_raw(out / "cmyk.rgb", read_rgb(out / "cmyk.jpg"))

    # Post-processing: random logits through the reference, per image.
    spec = specs["a"]
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(1, spec.size, spec.size, generator=g) * 3
    write_raw(out / "logits_a.f32", logits)
    for e in images:
        post = postprocess_logits(logits, (e["h"], e["w"]), spec)
        write_raw(out / f"{e['name']}.post_a.f32", post)
        write_raw(out / f"{e['name']}.postmask_a.u8", mask_from_logits(post, 0.5))

    # Resized shapes, including exact .5 ties (round half to even).
    resized = []
    for size in (32, 64, 256, 512):
        for longest in (size * 2, 1000, 1918, 3, 1):
            for other in (1, 2, 3, 5, 7, 333, 999, 1280, longest):
                if other > longest:
                    continue
                s = PreprocessSpec(size=size)
                for h, w in ((other, longest), (longest, other)):
                    resized.append([h, w, size, *s.resized_shape(h, w)])

    # The artifact folder: a U-Net/resnet18 with random weights, exported by the project's own
    # exporter (`python -m export trace` on a minimal logdir) when it is there, else traced and
    # frozen here with a manifest written per docs/manifest.md.
    model = build_model(arch="Unet", encoder_name="resnet18").eval()
    # A random network is not a car detector: pick the threshold at the median probability,
    # so that the masks are about half foreground and parity is not trivially all zeros.
    with torch.inference_mode():
        eager_logits = model(preprocess_batch(tensors, spec))
        probs = torch.cat([torch.sigmoid(postprocess_logits(eager_logits[i], (e["h"], e["w"]),
                                                            spec)).flatten()
                           for i, e in enumerate(images)])
    threshold = round(float(min(0.99, max(0.01, probs.median().item()))), 6)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    source = export_with_tool(out, model, spec, threshold, model_dir)
    if source is None:
        source = "make_fixtures.py (torch.jit.trace + freeze)"
        write_own_artifact(model, spec, threshold, model_dir)
    ts_path = model_dir / json.loads((model_dir / "manifest.json").read_text())[
        "artifacts"]["torchscript"]["file"]

    # Reference masks with the reference pipeline: preprocess_batch + jit.load + postprocess.
    ref_model = torch.jit.load(str(ts_path), map_location="cpu").eval()
    with torch.inference_mode():
        batch_logits = ref_model(preprocess_batch(tensors, spec))
        posts = [postprocess_logits(batch_logits[i], (e["h"], e["w"]), spec)
                 for i, e in enumerate(images)]
    for e, post in zip(images, posts, strict=True):
        write_raw(out / f"{e['name']}.ref_logits.f32", post)
        write_raw(out / f"{e['name']}.ref_mask.u8", mask_from_logits(post, threshold))

    # The refinement (output.refine, RefineSpec's defaults) through the Python reference: mask,
    # alpha matte, and cutouts on white, on a colour and transparent, from the same logits.
    from carseg.runtime import refine

    rspec = refine.RefineSpec()
    backdrops = {"white": torch.tensor([255, 255, 255], dtype=torch.uint8),
                 "colour": torch.tensor([0x33, 0x66, 0xcc], dtype=torch.uint8), "rgba": None}
    for i, (e, t) in enumerate(zip(images, tensors, strict=True)):
        small = postprocess_logits(batch_logits[i], rspec.grid(e["h"], e["w"], spec.size)[0],
                                   spec)
        fit = refine.fit(t, small, rspec, threshold, spec.size)
        mask, alpha = refine.matte(t, fit)
        write_raw(out / f"{e['name']}.refined_mask.u8", mask)
        write_raw(out / f"{e['name']}.alpha.u8", refine.alpha_u8(alpha, mask))
        for key, back in backdrops.items():
            write_raw(out / f"{e['name']}.cutout_{key}.u8",
                      refine.composite_soft(t, alpha, fit, back))

    cases = {"specs": {k: v.to_json() for k, v in specs.items()}, "images": images,
             "resized": resized, "threshold": threshold, "model_source": source,
             "torch_threads": torch.get_num_threads()}
    (out / "cases.json").write_text(json.dumps(cases, indent=2) + "\n")
    (out / "stamp").write_text(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
