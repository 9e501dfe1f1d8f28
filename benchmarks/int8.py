"""int8 against fp32 on the CPU: speed side by side, and the accuracy int8 keeps at full size.

    python -m export int8 demo/artifacts --calibration demo/csv/dataset_train.csv
    carseg synth --out out/ho --num 16 --size 1280x1918 --seed 7
    python -m benchmarks.int8 --artifacts demo/artifacts --data out/ho [--commit]

Speed: batch-1 p50 of `carseg_infer bench` with --precision int8 (model.int8.onnx through
libcarseg's ONNX Runtime adapter) and with fp32 (--backend onnx), and of ONNX Runtime fp32
from Python on the same model.onnx, at each --sizes, in alternated rounds in one session
(each round's medians kept). Accuracy: carseg_infer's full-resolution masks of the held-out
photos (refined, as it writes them by default) with int8 and with fp32: their IoU, and each
one's Dice against the true masks. Writes int8.json and int8.md to out/benchmarks/<device>/
(with --commit, benchmarks/results/<device>/).
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

import numpy as np
import torch
from PIL import Image

from benchmarks import measure as M
from benchmarks.cutout_quality import carseg_infer, run_infer
from benchmarks.refine_study import dice
from benchmarks.run import page_folder, write_page


def cpp_p50(artifacts: Path, precision: str, size: int, iters: int) -> float:
    with tempfile.TemporaryDirectory(prefix="carseg-int8-") as tmp:
        out = Path(tmp) / "bench.json"
        subprocess.run([carseg_infer(), "bench", "--model", str(artifacts), "--precision",
                        precision, "--backend", "onnx", "--batch", "1", "--size", str(size),
                        "--iters", str(iters), "--warmup", "2", "--json", str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(json.loads(out.read_text())["results"][0]["p50_ms"])


def python_ort_p50(model: Path, size: int, iters: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    return M.time_calls(lambda: session.run(None, {"input": x}), batch=1, iters=iters, warmup=2,
                        device=torch.device("cpu"), max_seconds=600.0).p50


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True,
                    help="a folder with model.onnx and model.int8.onnx (python -m export int8)")
    ap.add_argument("--data", type=Path, required=True,
                    help="held-out photos: train/*.jpg and train_masks/*_mask.gif")
    ap.add_argument("--sizes", default="256,1920", help="square input sizes timed at batch 1")
    ap.add_argument("--iters", default="20,3", help="timed calls per size, in --sizes' order")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    ap.add_argument("--commit", action="store_true",
                    help="write to benchmarks/results/<device>/ (default: out/benchmarks/)")
    args = ap.parse_args(argv)
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    q = manifest["artifacts"].get("onnx_int8")
    if q is None:
        raise SystemExit(f"{args.artifacts}: no int8 model (python -m export int8)")
    sizes = [int(s) for s in args.sizes.split(",")]
    iters = [int(s) for s in args.iters.split(",")]
    if len(iters) != len(sizes):
        raise SystemExit("--iters: one count per size")

    speed: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for size, n in zip(sizes, iters, strict=True):
            row = speed.setdefault(str(size), {"int8": [], "fp32": [], "python_ort_fp32": []})
            row["int8"].append(cpp_p50(args.artifacts, "int8", size, n))
            row["fp32"].append(cpp_p50(args.artifacts, "fp32", size, n))
            row["python_ort_fp32"].append(
                python_ort_p50(args.artifacts / manifest["artifacts"]["onnx"]["file"], size, n))
            sys.stderr.write(f"round {r + 1} {size}px: " + ", ".join(
                f"{k} {v[-1]:.1f} ms" for k, v in row.items()) + "\n")

    photos = sorted((args.data / "train").glob("*.jpg"))
    truth = {p.stem: np.asarray(Image.open(args.data / "train_masks" / f"{p.stem}_mask.gif")) > 0
             for p in photos}
    masks: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="carseg-int8-") as tmp:
        for precision in ("int8", "fp32"):
            out = Path(tmp) / precision
            run_infer(args.artifacts, args.data / "train", out, "--precision", precision,
                      "--backend", "onnx", "--cutout", "none")
            masks[precision] = {p.stem: np.asarray(Image.open(out / f"{p.stem}_mask.png")) > 0
                                for p in photos}
    ious = [float((masks["int8"][s] & masks["fp32"][s]).sum() /
                  max(1, (masks["int8"][s] | masks["fp32"][s]).sum())) for s in truth]
    dices = {k: [dice(masks[k][s], truth[s]) for s in truth] for k in masks}

    info = M.device_info(torch.device("cpu"))
    med = {size: {k: statistics.median(v) for k, v in row.items()} for size, row in speed.items()}
    result = {"device": info, "date": time.strftime("%Y-%m-%d"), "artifacts": str(args.artifacts),
              "calibration": q["calibration"], "threads": torch.get_num_threads(),
              "speed_rounds_ms": speed, "speed_median_ms": med,
              "photos": len(photos), "photo_size": list(truth[photos[0].stem].shape),
              "mask_iou_int8_vs_fp32": {"min": min(ious), "mean": statistics.fmean(ious)},
              "dice": {k: statistics.fmean(v) for k, v in dices.items()},
              "verify_parity": q.get("parity")}
    lines = [f"# int8 on the CPU: {info['name']}", "",
             f"{result['date']}, {result['threads']} threads, `{args.artifacts}` "
             f"(int8 calibrated on {q['calibration']['images']} photos of "
             f"`{q['calibration']['source']}`, {q['calibration']['method']}). Command: "
             f"`python -m benchmarks.int8 --artifacts {args.artifacts} --data {args.data}`", "",
             f"Batch-1 p50, median of {args.rounds} alternated rounds (each round's median in "
             "int8.json):", "",
             "| size | carseg_infer int8 | carseg_infer fp32 (ONNX Runtime) | "
             "ONNX Runtime fp32 (Python) | int8 speed-up over ONNX Runtime fp32 |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for size, m in med.items():
        lines.append(f"| {size} | {m['int8']:.1f} ms | {m['fp32']:.1f} ms | "
                     f"{m['python_ort_fp32']:.1f} ms | {m['python_ort_fp32'] / m['int8']:.2f}x |")
    h, w = result["photo_size"]
    lines += ["", f"Accuracy on {len(photos)} held-out photos of {w}x{h} (`{args.data}`), "
              "carseg_infer's refined full-resolution masks:", "",
              "| | value |", "| --- | ---: |",
              f"| mask IoU, int8 against fp32 (min / mean) | {min(ious):.4f} / "
              f"{statistics.fmean(ious):.4f} |",
              f"| Dice against the true masks, fp32 | {result['dice']['fp32']:.4f} |",
              f"| Dice against the true masks, int8 | {result['dice']['int8']:.4f} |",
              f"| Dice difference | {result['dice']['int8'] - result['dice']['fp32']:+.4f} |"]
    write_page(page_folder(info["slug"], args.commit), "int8", M.asjson(result),
               "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
