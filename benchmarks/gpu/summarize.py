"""summary.md of a GPU check (benchmarks/gpu/check.sh): each of issue 13's targets, measured.

    python benchmarks/gpu/summarize.py OUT WORK

Reads what the check wrote (OUT/bench_cpp.json, bench_py.json, e2e.json, steps.tsv; the fp16
folder's manifest in WORK) and says, per target, the figure, the target and whether it was met.
A figure the check could not measure is "not measured", never a guess.
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


def measure(out: Path, work: Path) -> dict[str, float | None]:
    cpp = _load(out / "bench_cpp.json") or {}
    e2e = _load(out / "e2e.json") or {}
    got: dict[str, float | None] = dict.fromkeys(TARGETS)
    b256 = cpp.get("256")
    if (r := _row(b256, 1)) is not None:
        got["b1_256"] = r["p50_ms"]
    if b256:
        got["throughput_256"] = max(r["images_per_second"] for r in b256["results"])
    if (r := _row(cpp.get("1280x1920"), 1)) is not None:
        got["b1_1280x1920"] = r["p50_ms"]
    if e2e:
        got["e2e"] = e2e.get("carseg_infer_images_per_s")
        seed = (e2e.get("seed_script") or {}).get("images_per_s")
        if got["e2e"] and seed:
            got["e2e_vs_seed"] = got["e2e"] / seed
        got["cold_start"] = e2e.get("cold_start_s")
    manifest = _load(work / "art16" / "manifest.json")
    if manifest:
        ious = [a["parity"]["mask_iou"] for a in manifest["artifacts"].values()
                if a.get("parity") and a["parity"].get("mask_iou") is not None]
        got["fp16_iou"] = min(ious) if ious else None
    return got


def anchors(work: Path) -> list[str]:
    """The same run's Python backends (eager fp32, torch.compile + CUDA graphs fp16, ...): the
    table of python -m benchmarks's own page."""
    page = work / "bench_py" / "results.md"
    if not page.is_file():
        return ["python -m benchmarks: not measured"]
    return [ln for ln in page.read_text().splitlines() if ln.startswith("|")]


def main(argv: list[str]) -> int:
    out, work = Path(argv[0]), Path(argv[1])
    got = measure(out, work)
    cpp = (_load(out / "bench_cpp.json") or {}).get("256") or {}
    device = cpp.get("device", "?")
    lines = [f"# GPU check: {device}", "", "| target | measured | target | met |",
             "| --- | ---: | ---: | --- |"]
    precision = cpp.get("precision", "fp16")
    for key, (label, unit, target, better) in TARGETS.items():
        label = label.replace("carseg_infer fp16", f"carseg_infer {precision}")
        v = got[key]
        if v is None:
            lines.append(f"| {label} | not measured | {target} {unit} | - |")
            continue
        met = v <= target if better == "lower" else v >= target
        lines.append(f"| {label} | {v:.4g} {unit} | {'<=' if better == 'lower' else '>='} "
                     f"{target} {unit} | {'yes' if met else 'NO'} |")
    lines += ["", "Python backends, same run, same model (python -m benchmarks):", ""]
    lines += anchors(work)
    steps = (out / "steps.tsv").read_text().splitlines()[1:] if (out / "steps.tsv").is_file() \
        else []
    failed = [s.split("\t")[0] for s in steps if s.split("\t")[1] != "0"]
    lines += ["", f"Steps that failed: {', '.join(failed) if failed else 'none'} "
              f"(log.txt has their output)."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
