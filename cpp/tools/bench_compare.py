"""Batch-1 latency side by side: PyTorch eager, TorchScript from Python, carseg_infer bench.

Same artifact folder, same input size, same thread count, one run:
    python cpp/tools/bench_compare.py --model DIR --infer PATH/carseg_infer --iters 30 --threads 2
Eager rebuilds the architecture named in manifest.json (weights do not change the timing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))


def median_ms(fn, x: torch.Tensor, iters: int, warmup: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--infer", type=Path, required=True)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3,
                   help="interleave the runners this many times (fair on a shared machine)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from carseg.train.models import build_model

    torch.set_num_threads(args.threads)
    manifest = json.loads((args.model / "manifest.json").read_text())
    size = manifest["preprocessing"]["size"]
    x = torch.randn(1, 3, size, size)
    torch.manual_seed(0)
    eager = build_model(arch=manifest["model"]["arch"],
                        encoder_name=manifest["model"]["encoder_name"]).eval()
    ts = torch.jit.load(str(args.model / manifest["artifacts"]["torchscript"]["file"]),
                        map_location="cpu").eval()
    cpp_runs = [("carseg_infer", ["--backend", "torchscript"]),
                ("carseg_infer_optimized", ["--backend", "torchscript", "--optimize"])]
    if "aoti" in (manifest.get("artifacts") or {}):
        cpp_runs.append(("carseg_infer_aoti", ["--backend", "aoti"]))
    runs: dict[str, list[float]] = {"pytorch_eager": [], "torchscript_python": []}
    runs.update({name: [] for name, _ in cpp_runs})
    for _ in range(args.rounds):
        runs["pytorch_eager"].append(median_ms(eager, x, args.iters, args.warmup))
        runs["torchscript_python"].append(median_ms(ts, x, args.iters, args.warmup))
        for name, extra in cpp_runs:
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "bench.json"
                subprocess.run([str(args.infer), "bench", "--model", str(args.model), "--batch",
                                "1", "--iters", str(args.iters), "--warmup", str(args.warmup),
                                "--threads", str(args.threads), "--json", str(out), *extra],
                               check=True, capture_output=True)
                runs[name].append(json.loads(out.read_text())["results"][0]["p50_ms"])
    rows = {k: statistics.median(v) for k, v in runs.items()}
    result = {"input": [1, 3, size, size], "threads": args.threads, "iters": args.iters,
              "median_ms": rows, "per_round_median_ms": runs, "rounds": args.rounds,
              "torch": torch.__version__}
    for k, v in rows.items():
        sys.stdout.write(f"{k:24s} {v:8.2f} ms\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
