"""`python -m benchmarks`: every backend on the same model and inputs, in one run.

For each resolution and batch size: p50/p90/p99 latency, throughput, peak device memory and
accuracy against eager fp32 (max |diff| of logits, mask IoU). Then the device's measured
ceiling (a large matrix product, a large copy) and each backend's share of it. Writes
results.json, results.md (with the plots embedded) and PNG plots to out/benchmarks/<device-slug>/
under the current folder (untracked); `--commit` writes them to the committed page,
benchmarks/results/<device-slug>/, instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import backends as B
from benchmarks import measure as M
from carseg.io.files import write_atomic

log = logging.getLogger("benchmarks")
RESULTS = Path(__file__).resolve().parent / "results"  # committed pages, one per device
SCRATCH = Path("out") / "benchmarks"  # a plain run's results: untracked (.gitignore: /out/)
CPU_MAX_BATCH_PIXELS = 4 * 2 ** 20  # on the CPU, full-size inputs run at batch 1 only


def page_folder(slug: str, commit: bool) -> Path:
    """Where a study's page goes: benchmarks/results/<device>/ with --commit, else
    out/benchmarks/<device>/; created."""
    folder = (RESULTS if commit else SCRATCH) / slug
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_page(folder: Path, name: str, data: Any, markdown: str, indent: int = 2) -> None:
    """A study's NAME.json and NAME.md in `folder`, and the markdown on stdout."""
    write_atomic(folder / f"{name}.json", json.dumps(data, indent=indent) + "\n")
    write_atomic(folder / f"{name}.md", markdown)
    sys.stdout.write(markdown)


def link_jpegs(folder: Path, work: Path) -> tuple[list[Path], Path]:
    """The JPEG photos of `folder`, sorted, and work/jpegs holding links to exactly them: what
    every end-to-end pipeline reads, whatever else the folder holds."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not photos:
        raise FileNotFoundError(f"{folder}: no JPEG photos for the end-to-end run")
    jpegs = work / "jpegs"
    jpegs.mkdir()
    for p in photos:
        (jpegs / p.name).symlink_to(p.resolve())
    return photos, jpegs


def _grid(args: argparse.Namespace, manifest: dict[str, Any]) -> tuple[list[int], list[int]]:
    if args.quick:
        return [1, 4], [manifest["preprocessing"]["size"] if args.sizes is None else args.sizes[0]]
    sizes = args.sizes or [256, 1920]  # 1920: Carvana's 1918x1280, longest side padded to /32
    batches = args.batches or ([1, 8, 32, 128] if args.device == "cuda" else [1, 4, 16])
    return batches, sizes


def batches_for(size: int, batches: list[int], device: torch.device) -> list[int]:
    """On the CPU, full-size inputs run at batch 1 only: a batch of them takes minutes a call
    on 2 cores (and the eager reference alone would need tens of GB)."""
    if device.type != "cpu":
        return batches
    keep = [b for b in batches if b == 1 or b * size * size <= CPU_MAX_BATCH_PIXELS]
    return keep or [1]


def run_backend(backend: B.Backend, x_by_size: dict[int, torch.Tensor],
                ref_by_size: dict[int, torch.Tensor], batches: list[int], iters: int,
                warmup: int, flops: dict[int, int], peak: dict[str, float],
                max_seconds: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"backend": backend.name, "cells": []}
    reason = backend.skip_reason()
    if reason:
        entry["skipped"] = reason
        log.info("  %-18s skipped: %s", backend.name, reason)
        return entry
    t0 = time.monotonic()
    try:
        backend.load()
    except Exception as e:  # a backend that fails to load is reported, not fatal
        entry["skipped"] = f"failed to load: {e.__class__.__name__}: {str(e)[:300]}"
        log.info("  %-18s %s", backend.name, entry["skipped"])
        return entry
    entry["load_seconds"] = round(time.monotonic() - t0, 2)
    entry["precision"] = backend.precision
    dev = backend.device
    for size, x_all in x_by_size.items():
        for batch in batches:
            if batch > x_all.shape[0]:
                continue  # not run at this size (see batches_for)
            x = x_all[:batch]
            cell: dict[str, Any] = {"size": size, "batch": batch}
            try:
                rss_before = M.resident_mib() if dev.type == "cpu" else None
                M.peak_memory_reset(dev)
                out = backend(x)
                cell.update(M.parity(ref_by_size[size][:batch], out,
                                     backend.manifest["output"].get("threshold", 0.5)))
                t = M.time_calls(lambda x=x: backend(x), batch=batch, iters=iters, warmup=warmup,
                                 device=dev, max_seconds=max_seconds)
            except Exception as e:
                cell["error"] = f"{e.__class__.__name__}: {str(e)[:300]}"
                entry["cells"].append(cell)
                log.info("  %-18s %4d px batch %-4d error: %s", backend.name, size, batch,
                         cell["error"])
                continue
            cell.update(t.to_json())
            cell["peak_memory_mib"] = M.peak_memory_mib(dev)
            if rss_before is not None and cell["peak_memory_mib"] is not None:
                # what running this cell added on top of what the process already held
                cell["peak_memory_increase_mib"] = cell["peak_memory_mib"] - rss_before
            tflops = flops[size] * t.throughput / 1e12
            key = "matmul_float16_tflops" if backend.precision == "fp16" and \
                "matmul_float16_tflops" in peak else "matmul_float32_tflops"
            cell["achieved_tflops"] = tflops
            cell["share_of_peak"] = tflops / peak[key] if peak.get(key) else None
            entry["cells"].append(cell)
            log.info("  %-18s %4d px batch %-4d p50 %8.2f ms  %8.1f img/s  max|d| %.1e  IoU %.4f",
                     backend.name, size, batch, t.p50, t.throughput, cell["max_abs_diff"],
                     cell["mask_iou"])
    return entry


def cpp_entry(artifacts: Path, device: torch.device, batches: list[int], sizes: list[int],
              iters: int, warmup: int, flops: dict[int, int], peak: dict[str, float],
              backend: str, manifest: dict[str, Any], fusion: bool = False
              ) -> dict[str, Any]:
    """carseg_infer bench (the model alone, from C++) on one artifact, at the same sizes and
    batches: "carseg_infer/torchscript" beside "torchscript" (the same file from Python);
    fusion: with --onednn-fusion ("carseg_infer/torchscript+onednn")."""
    name = f"carseg_infer/{backend}" + ("+onednn" if fusion else "")
    entry: dict[str, Any] = {"backend": name, "cells": [], "raw": []}
    if not any(a.get("format", k) == backend for k, a in manifest["artifacts"].items()):
        entry["skipped"] = f"no {backend} artifact in the folder"
        log.info("  %-22s skipped: %s", name, entry["skipped"])
        return entry
    for size in sizes:
        result = B.cpp_bench(artifacts, device, batches_for(size, batches, device), iters,
                             warmup, size, backend=backend,
                             # fp32 by name: the default (auto) would run a verified int8
                             # model, not the file the Python row beside it runs
                             extra=["--precision", "fp32",
                                    *(["--onednn-fusion"] if fusion else [])])
        if isinstance(result, str):
            entry["skipped"] = result
            log.info("  %-22s skipped: %s", name, result)
            return entry
        entry["raw"].append(result)
        entry["precision"] = result.get("precision", "fp32")
        for row in result.get("results", []):
            cell = {"size": size, "batch": row["batch"], "p50_ms": row["p50_ms"],
                    "p90_ms": row["p90_ms"], "p99_ms": row["p99_ms"],
                    # from the median, as for the Python backends (its own figure: the mean)
                    "throughput_img_s": row["batch"] * 1000.0 / row["p50_ms"],
                    "cuda_graphs": row.get("cuda_graphs", False)}
            cell["achieved_tflops"] = flops[size] * cell["throughput_img_s"] / 1e12
            key = "matmul_float32_tflops"
            cell["share_of_peak"] = cell["achieved_tflops"] / peak[key] if peak.get(key) else None
            entry["cells"].append(cell)
            log.info("  %-22s %4d px batch %-4d p50 %8.2f ms  %8.1f img/s", name,
                     size, row["batch"], row["p50_ms"], cell["throughput_img_s"])
    return entry


def end_to_end(artifacts: Path, folder: Path, device: torch.device, work: Path,
               manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """A folder of full-size JPEGs to masks and white-background cutouts, per pipeline.
    Each figure counts decode, inference and writing both files, and not model loading."""
    import shutil
    import subprocess

    from benchmarks import seed_script
    from carseg.apps.cutout import run_cutout
    from carseg.runtime.manifest import auto_precision, load_manifest
    from carseg.runtime.predictor import open_predictor

    photos, jpegs = link_jpegs(folder, work)
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        if "skipped" in row:
            log.info("  e2e %-44s skipped: %s", row["pipeline"], row["skipped"])
        else:
            log.info("  e2e %-44s %6.2f img/s", row["pipeline"], row["images_per_s"])

    r = seed_script.run(artifacts, photos, work / "seed")
    add({"pipeline": "seed script (cv2 + albumentations + TorchScript)", **r})
    backends = ["torchscript", "onnx", "aoti", "native"]
    for backend in backends:
        name = f"carseg cutout --backend {backend}"
        if backend != "native" and backend not in manifest["artifacts"]:
            add({"pipeline": name, "skipped": f"no {backend} artifact in the folder"})
            continue
        try:
            predictor = open_predictor(artifacts, backend=backend, device=device.type)
        except Exception as e:  # noqa: BLE001 - reported in the table, the others go on
            add({"pipeline": name, "skipped": str(e).splitlines()[0][:200]})
            continue
        rep = run_cutout([jpegs], predictor, work / f"cutout_{backend}", progress=False)
        add({"pipeline": f"{name} ({predictor.precision})", "images": len(rep.done),
             "seconds": rep.seconds, "images_per_s": rep.images_per_s})
    exe = shutil.which("carseg_infer", path=str(Path(sys.executable).parent))
    if exe is None:
        add({"pipeline": "carseg_infer infer", "skipped": "carseg_infer not built"})
        return rows
    # The defaults (precision auto: the folder's verified int8 model where make demo exported
    # one, else fp32), op-for-op pre/post-processing, and fp32 by name where auto is int8.
    runs = [[], ["--exact"], ["--backend", "torchscript"]]
    if auto_precision(load_manifest(artifacts), "native", device.type) == "int8":
        runs.append(["--precision", "fp32"])
    for i, extra in enumerate(runs):
        label = " ".join(["carseg_infer infer", *extra])
        report = work / f"cpp_report{i}.json"
        proc = subprocess.run([exe, "infer", "--model", str(artifacts), "--input", str(jpegs),
                               "--output", str(work / f"cpp{i}"), "--device",
                               device.type, "--report", str(report), *extra],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            add({"pipeline": label,
                 "skipped": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"})
            continue
        rep = json.loads(report.read_text())
        add({"pipeline": f"{label} ({rep['precision']} {rep['backend']}, batch {rep['batch']})",
             "images": rep["succeeded"],
             "seconds": rep["seconds"], "images_per_s": rep["images_per_second"]})
    return rows


def write_markdown(results: dict[str, Any], path: Path,  # noqa: C901
                   plots: list[Path] | None = None) -> None:
    dev = results["device"]
    lines = [f"# carseg benchmark: {dev['name']} ({dev['type']})", "",
             f"torch {dev['torch']}, {results['threads']} threads, model "
             f"{results['model']['arch']}/{results['model']['encoder_name']}, "
             f"{results['iters']} timed calls after {results['warmup']} warm-up, "
             f"{results['date']}. Command: `{results['command']}`", "",
             "Peak measured on this device: " + ", ".join(
                 f"{k} {v:.3g}" for k, v in results["peak"].items()), "",
             "FLOPs per image (counted): " + ", ".join(
                 f"{s} px: {f / 1e9:.1f} GFLOP" for s, f in results["flops_per_image"].items()),
             "", "Share of peak = counted FLOPs x images/s over the measured fp32 (fp16 for "
             "fp16 backends) matrix-product rate. The count is of direct convolution; over "
             "100% means the library did less arithmetic than that (oneDNN's Winograd 3x3 "
             "convolutions), not that the chip beat its peak.",
             "", "Peak memory: on CUDA the allocator's peak; on the CPU the process's peak "
             "resident set during the cell, and in brackets how much the cell added to what "
             "the process already held.",
             "", "| backend | precision | size | batch | p50 ms | p90 ms | p99 ms | img/s | "
             "max abs diff | mask IoU | share of peak | peak MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    skipped = []
    for e in results["backends"]:
        if "skipped" in e:
            skipped.append(f"- **{e['backend']}**: skipped: {e['skipped']}")
            continue
        for c in e["cells"]:
            if "error" in c:
                lines.append(f"| {e['backend']} | {e.get('precision', '')} | {c['size']} | "
                             f"{c['batch']} | error: {c['error'][:60]} | | | | | | | |")
                continue
            share = c.get("share_of_peak")
            lines.append(
                f"| {e['backend']} | {e.get('precision', '')} | {c['size']} | {c['batch']} | "
                f"{c['p50_ms']:.2f} | {c['p90_ms']:.2f} | {c['p99_ms']:.2f} | "
                f"{c['throughput_img_s']:.1f} | "
                f"{c['max_abs_diff']:.1e} | {c['mask_iou']:.4f} | " if "max_abs_diff" in c else
                f"| {e['backend']} | {e.get('precision', '')} | {c['size']} | {c['batch']} | "
                f"{c['p50_ms']:.2f} | {c['p90_ms']:.2f} | {c['p99_ms']:.2f} | "
                f"{c['throughput_img_s']:.1f} | | | ")
            lines[-1] += (f"{share:.1%} |" if share is not None else " |")
            mem, inc = c.get("peak_memory_mib"), c.get("peak_memory_increase_mib")
            lines[-1] += (f" {mem:.0f}" + (f" (+{inc:.0f})" if inc is not None else "") + " |"
                          if mem is not None else " |")
    if skipped:
        lines += ["", "Skipped:", *skipped]
    if results.get("end_to_end"):
        lines += ["", f"End to end: {results['end_to_end_input']} (decode, infer, mask PNG and "
                  "white JPEG cutout written; model loading not counted)", "",
                  "| pipeline | images | seconds | images/s |", "| --- | ---: | ---: | ---: |"]
        for r in results["end_to_end"]:
            if "skipped" in r:
                lines.append(f"| {r['pipeline']} | skipped: {r['skipped']} | | |")
            else:
                lines.append(f"| {r['pipeline']} | {r['images']} | {r['seconds']:.2f} | "
                             f"{r['images_per_s']:.2f} |")
    sc = results.get("scale")
    if sc and "skipped" not in sc:
        ip = sc["in_process"]
        lines += ["", f"Scaling out on {results['scale_input']} (loopback, local Ray with 2 "
                  "CPUs, one replica; a request is decode + predict + PNG encode):", "",
                  "| path | concurrency | requests | p50 ms | p99 ms | req/s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |",
                  f"| in-process (no server) | 1 | {ip['requests']} | {ip['p50_ms']:.1f} | "
                  f"{ip['p99_ms']:.1f} | {ip['throughput_rps']:.1f} |"]
        for r in sc["served"]:
            lines.append(f"| Ray Serve | {r['concurrency']} | {r['requests']} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_rps']:.1f} |")
        lines += ["", "| carseg batch workers | images | images/s (pipeline) | "
                  "seconds incl. Ray start |", "| ---: | ---: | ---: | ---: |"]
        for r in sc["batch"]:
            lines.append(f"| {r['workers']} | {r['images']} | {r['images_per_s']:.2f} | "
                         f"{r['seconds_with_ray_start']:.1f} |")
    elif sc:
        lines += ["", f"Scaling out: skipped: {sc['skipped']}"]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem.replace('_', ' ')} px]({p.name})"
                                        for p in plots]
    write_atomic(path, "\n".join(lines) + "\n")


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no plots")
        return []
    written = []
    sizes = sorted({c["size"] for e in results["backends"] for c in e.get("cells", [])
                    if "error" not in c})
    for metric, label, fname in (("p50_ms", "p50 latency (ms)", "latency"),
                                 ("throughput_img_s", "throughput (images/s)", "throughput")):
        for size in sizes:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for e in results["backends"]:
                cells = [c for c in e.get("cells", []) if c["size"] == size and "error" not in c]
                if len(cells) < 1:
                    continue
                ax.plot([c["batch"] for c in cells], [c[metric] for c in cells], marker="o",
                        label=e["backend"])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs batch, {size}x{size}, {results['device']['name']}",
                         fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            path = out / f"{fname}_{size}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m benchmarks --artifacts demo/artifacts --quick")
    p.add_argument("--artifacts", type=Path, required=True,
                   help="folder written by `python -m export all` (manifest.json)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")],
                   help="batch sizes, e.g. 1,8,32")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                   help="square input sizes, multiples of 32 (default 256,1920)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per cell")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first")
    p.add_argument("--max-seconds", type=float, default=20.0, help="time cap per cell")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batches 1,4, the model's size, few iterations (< 3 min)")
    p.add_argument("--e2e", type=Path, metavar="DIR",
                   help="also run the end-to-end comparison on this folder of JPEGs "
                        "(e.g. `carseg synth --size 1280x1918`'s train/)")
    p.add_argument("--scale", type=Path, metavar="DIR",
                   help="also benchmark Ray Serve (concurrency 1/8/32 vs in-process) and "
                        "`carseg batch` (1 and 2 workers) on this folder of photos")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path,
                       help="results folder (default: out/benchmarks/<device-slug>, untracked)")
    where.add_argument("--commit", action="store_true",
                       help="write the committed page, benchmarks/results/<device-slug>/")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("benchmarks: error: --device cuda requested but CUDA is not available\n")
        return 2
    try:
        manifest = B.load_manifest(args.artifacts)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        sys.stderr.write(f"benchmarks: error: {e}\n")
        return 2
    device = torch.device(args.device)
    iters = args.iters or (10 if args.quick else 50)
    warmup = args.warmup or (2 if args.quick else 5)
    batches, sizes = _grid(args, manifest)
    info = M.device_info(device)
    log.info("device: %s; batches %s; sizes %s; %d iters", info["name"], batches, sizes, iters)

    log.info("measuring the device's peak ...")
    peak = M.measure_peak(device, seconds=1.0 if args.quick else 3.0)
    eager = B.Eager(args.artifacts, manifest, device)
    try:
        eager.load()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.stderr.write(f"benchmarks: error: {e}\n")
        return 2
    gen = torch.Generator().manual_seed(0)
    x_by_size = {s: torch.randn(max(batches_for(s, batches, device)), 3, s, s,
                                generator=gen).to(device) for s in sizes}
    flops = {s: M.count_flops(eager.model, x_by_size[s][:1]) for s in sizes}
    with torch.inference_mode():
        ref_by_size = {s: eager(x_by_size[s]).float() for s in sizes}

    results: dict[str, Any] = {
        "device": info, "threads": torch.get_num_threads(), "peak": peak,
        "flops_per_image": flops, "iters": iters, "warmup": warmup,
        "date": time.strftime("%Y-%m-%d"), "model": manifest["model"],
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backends": []}
    for backend in B.python_backends(args.artifacts, manifest, device,
                                     compile_=not args.no_compile):
        results["backends"].append(run_backend(backend, x_by_size, ref_by_size, batches, iters,
                                               warmup, flops, peak, args.max_seconds))
    for cpp_backend, fusion in (("torchscript", False), ("torchscript", True), ("aoti", False),
                                ("onnx", False)):
        if (fusion or cpp_backend == "onnx") and device.type != "cpu":
            continue
        results["backends"].append(cpp_entry(args.artifacts, device, batches, sizes, iters,
                                             warmup, flops, peak, cpp_backend, manifest, fusion))
    reason = B.bindings_skip_reason()
    results["backends"].append({"backend": "bindings", "cells": [], "skipped": reason})
    log.info("  %-18s skipped: %s", "bindings", reason)

    out = args.out or (RESULTS if args.commit else SCRATCH) / info["slug"]
    out.mkdir(parents=True, exist_ok=True)
    if args.e2e:
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            results["end_to_end"] = end_to_end(args.artifacts, args.e2e, device, Path(work),
                                               manifest)
        results["end_to_end_input"] = str(args.e2e)
    if args.scale:
        from benchmarks import scale

        photos = sorted(p for p in args.scale.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        log.info("scaling out (Ray Serve, Ray Data) on %d photos from %s", len(photos),
                 args.scale)
        results["scale"] = scale.run(args.artifacts, photos, args.quick)
        results["scale_input"] = str(args.scale)
    write_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    plots = write_plots(results, out)
    write_markdown(results, out / "results.md", plots)
    log.info("wrote %s, %s and %d plot(s)", out / "results.json", out / "results.md", len(plots))
    return 0
