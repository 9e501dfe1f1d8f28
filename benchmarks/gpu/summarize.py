"""summary.md of a GPU check (benchmarks/gpu/check.sh): each of issue 13's targets, measured.

    python benchmarks/gpu/summarize.py OUT WORK

Reads what the check wrote (OUT/bench_cpp.json, bench_py.json, e2e.json, steps.tsv; the fp16
folder's manifest and bench_cpp_aoti.json in WORK) and says, per target, the figure, the
target and whether it was met. A figure the check could not measure is "not measured",
never a guess.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (label, unit, target, better): "lower" means the figure must be <= the target.
TARGETS = {
    "b1_256": ("carseg_infer fp16, 256x256, batch 1, p50", "ms", 0.25, "lower"),
    "throughput_256": ("carseg_infer fp16, 256x256, best batch, throughput", "img/s", 25000,
                       "higher"),
    "b1_1280x1920": ("carseg_infer fp16, 1280x1920, batch 1, p50", "ms", 3.0, "lower"),
    "e2e": ("end to end, 1918x1280 JPEG -> mask PNG + white JPEG", "img/s", 500, "higher"),
    "e2e_vs_seed": ("end to end against the seed tutorial's way", "x", 14, "higher"),
    "cold_start": ("cold start, process start to the first mask (C++)", "s", 2.0, "lower"),
    "fp16_iou": ("fp16 masks against fp32, verify set, lowest IoU", "IoU", 0.995, "higher"),
}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _row(bench: dict[str, Any] | None, batch: int | None = None, graphs: bool = True
         ) -> dict[str, Any] | None:
    if not bench:
        return None
    rows = [r for r in bench.get("results", []) if r.get("cuda_graphs", False) == graphs
            or bench.get("device", "cpu") == "cpu"]
    if batch is not None:
        rows = [r for r in rows if r["batch"] == batch]
    return rows[0] if rows else None


def _cpp_benches(out: Path, work: Path) -> list[tuple[str, dict[str, Any]]]:
    """carseg_infer's bench results, each with the backend it ran on (as it reported it):
    the default backend's (OUT/bench_cpp.json) and, where the check made an AOTInductor
    package, AOTInductor's (WORK/bench_cpp_aoti.json)."""
    found = (_load(out / "bench_cpp.json"), _load(work / "bench_cpp_aoti.json"))
    return [((b.get("256") or {}).get("backend", "?"), b) for b in found if b]


def measure(out: Path, work: Path) -> tuple[dict[str, float | None], dict[str, str]]:
    """Each target's figure (the best backend's, for carseg_infer's) and that backend."""
    e2e = _load(out / "e2e.json") or {}
    got: dict[str, float | None] = dict.fromkeys(TARGETS)
    by: dict[str, str] = {}

    def keep(key: str, value: float, backend: str) -> None:
        lower = TARGETS[key][3] == "lower"
        if got[key] is None or (value < got[key] if lower else value > got[key]):
            got[key], by[key] = value, backend

    for backend, cpp in _cpp_benches(out, work):
        b256 = cpp.get("256")
        if (r := _row(b256, 1)) is not None:
            keep("b1_256", r["p50_ms"], backend)
        if b256 and b256.get("results"):
            keep("throughput_256", max(r["images_per_second"] for r in b256["results"]),
                 backend)
        if (r := _row(cpp.get("1280x1920"), 1)) is not None:
            keep("b1_1280x1920", r["p50_ms"], backend)
    if e2e:
        # the best of the runs the check makes (6 and 14 workers a side; nvJPEG decoding)
        runs = {"6 workers": e2e.get("carseg_infer_images_per_s"),
                "14 workers": (e2e.get("workers_14") or {}).get("images_per_second"),
                "14 workers, nvJPEG": (e2e.get("nvjpeg_14") or {}).get("images_per_second")}
        for label, rate in runs.items():
            if rate:
                keep("e2e", rate, label)
        seed = (e2e.get("seed_script") or {}).get("images_per_s")
        if got["e2e"] and seed:
            got["e2e_vs_seed"], by["e2e_vs_seed"] = got["e2e"] / seed, by["e2e"]
        got["cold_start"] = e2e.get("cold_start_s")
    manifest = _load(work / "art16" / "manifest.json")
    if manifest:
        ious = [a["parity"]["mask_iou"] for a in manifest["artifacts"].values()
                if a.get("parity") and a["parity"].get("mask_iou") is not None]
        got["fp16_iou"] = min(ious) if ious else None
    return got, by


def anchors(work: Path) -> list[str]:
    """The same run's Python backends (eager fp32, torch.compile + CUDA graphs fp16, ...): the
    table of python -m benchmarks's own page."""
    page = work / "bench_py" / "results.md"
    if not page.is_file():
        return ["python -m benchmarks: not measured"]
    return [ln for ln in page.read_text().splitlines() if ln.startswith("|")]


def main(argv: list[str]) -> int:
    out, work = Path(argv[0]), Path(argv[1])
    got, by = measure(out, work)
    cpp = (_load(out / "bench_cpp.json") or {}).get("256") or {}
    device = cpp.get("device", "?")
    lines = [f"# GPU check: {device}", "", "| target | measured | target | met |",
             "| --- | ---: | ---: | --- |"]
    precision = cpp.get("precision", "fp16")
    for key, (label, unit, target, better) in TARGETS.items():
        label = label.replace("carseg_infer fp16", f"carseg_infer {precision}")
        if key in by:
            label += f" ({by[key]})"
        v = got[key]
        if v is None:
            lines.append(f"| {label} | not measured | {target} {unit} | - |")
            continue
        met = v <= target if better == "lower" else v >= target
        lines.append(f"| {label} | {v:.4g} {unit} | {'<=' if better == 'lower' else '>='} "
                     f"{target} {unit} | {'yes' if met else 'NO'} |")
    e2e = _load(out / "e2e.json") or {}
    w14 = e2e.get("workers_14") or {}
    if w14.get("images_per_second") and e2e.get("carseg_infer_images_per_s"):
        lines += ["", f"End to end by workers a side (decode and encode): 6 "
                  f"{e2e['carseg_infer_images_per_s']:.1f} img/s, 14 "
                  f"{w14['images_per_second']:.1f} img/s; the target rows take the better."]
    nv = e2e.get("nvjpeg_14") or {}
    if nv:
        lines += ["", "End to end with JPEGs decoded on the GPU (`--decode gpu`, 14 workers): "
                  + (f"{nv['images_per_second']:.1f} img/s, {nv.get('failed')} failed, stages "
                     + json.dumps(nv.get("stages"))
                     if nv.get("images_per_second") else f"no result ({nv.get('error')})")]
        iou = nv.get("mask_iou_against_cpu_decoding")
        if iou:
            lines += [f"Masks from nvJPEG's pixels against libjpeg-turbo's, {iou['photos']} "
                      f"photos: IoU mean {iou['mean']:.4f}, lowest {iou['min']:.4f}."]
    stages = e2e.get("stages")
    if stages:
        lines += ["", "End to end, where the time went (busy seconds summed over each stage's "
                  f"threads; {stages['workers']} decode and {stages['workers']} encode "
                  "workers): " + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in stages.items()
                                           if k.endswith("_s"))]
    lines += ["", "Python backends, same run, same model (python -m benchmarks):", ""]
    lines += anchors(work)
    steps = (out / "steps.tsv").read_text().splitlines()[1:] if (out / "steps.tsv").is_file() \
        else []
    rcs = [s.split("\t")[:2] for s in steps]
    failed = [name for name, rc in rcs if rc not in ("0", "skipped")]
    skipped = [name for name, rc in rcs if rc == "skipped"]
    lines += ["", f"Steps that failed: {', '.join(failed) if failed else 'none'} "
              f"(log.txt has their output)."]
    if skipped:
        lines += [f"Steps skipped (ONLY, or the time budget): {', '.join(skipped)}."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
