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
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from carseg.models import build_model

    torch.set_num_threads(args.threads)
    manifest = json.loads((args.model / "manifest.json").read_text())
    size = manifest["preprocessing"]["size"]
    x = torch.randn(1, 3, size, size)
    torch.manual_seed(0)
    eager = build_model(arch=manifest["model"]["arch"],
                        encoder_name=manifest["model"]["encoder_name"]).eval()
    ts = torch.jit.load(str(args.model / manifest["artifacts"]["torchscript"]["file"]),
                        map_location="cpu").eval()
    rows = {"pytorch_eager": median_ms(eager, x, args.iters, args.warmup),
            "torchscript_python": median_ms(ts, x, args.iters, args.warmup)}
    for name, extra in (("carseg_infer", []), ("carseg_infer_optimized", ["--optimize"])):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "bench.json"
            subprocess.run([str(args.infer), "bench", "--model", str(args.model), "--batch", "1",
                            "--iters", str(args.iters), "--warmup", str(args.warmup),
                            "--threads", str(args.threads), "--json", str(out), *extra],
                           check=True, capture_output=True)
            rows[name] = json.loads(out.read_text())["results"][0]["p50_ms"]
    result = {"input": [1, 3, size, size], "threads": args.threads, "iters": args.iters,
              "median_ms": rows, "torch": torch.__version__}
    for k, v in rows.items():
        sys.stdout.write(f"{k:24s} {v:8.2f} ms\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
