"""End to end on this machine: the seed tutorial's script against carseg_infer, alternated.

    carseg synth --out out/e64 --num 64 --size 1280x1918 --seed 7
    python -m export int8 demo/artifacts --calibration demo/csv/dataset_train.csv   (make demo does)
    python -m benchmarks.e2e --artifacts demo/artifacts --photos out/e64/train [--commit]

A folder of full-size JPEGs to a mask PNG and a white JPEG cutout each, timed from the first
photo read to the last file written (model loading not counted, for every pipeline): the seed
tutorial's Python script (benchmarks/seed_script.py: cv2, albumentations, TorchScript, one
photo at a time, no refinement), then `carseg_infer infer` with its defaults (precision auto:
int8 where the folder has a verified model.int8.onnx, else fp32; refined), with --no-refine,
and, where auto runs int8, with --precision fp32 (refined and not). The pipelines take turns
in each round, so that a slower spell of a noisy machine falls on all of them; the table gives
each one's median over the rounds and its speed-up over the seed's median, and each round's
own ratio is in e2e.json. Writes e2e.json and e2e.md to out/benchmarks/<device>/ (with
--commit, benchmarks/results/<device>/).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import measure as M
from benchmarks import seed_script
from benchmarks.cutout_quality import run_infer
from benchmarks.run import link_jpegs, page_folder, write_page
from carseg.runtime.manifest import auto_precision, load_manifest

SEED = "seed script (cv2 + albumentations + TorchScript, no refinement)"
REFINED = "carseg_infer infer (defaults: precision auto, refined)"
PLAIN = "carseg_infer infer --no-refine"
FP32_REFINED = "carseg_infer infer --precision fp32 (refined)"
FP32_PLAIN = "carseg_infer infer --precision fp32 --no-refine"


def pipelines(artifacts: Path) -> dict[str, list[str]]:
    """carseg_infer's rows: label -> its extra flags. Where auto runs the folder's verified
    int8 model, fp32 gets rows of its own."""
    rows = {REFINED: [], PLAIN: ["--no-refine"]}
    if auto_precision(load_manifest(artifacts), "native", "cpu") == "int8":
        rows[FP32_REFINED] = ["--precision", "fp32"]
        rows[FP32_PLAIN] = ["--precision", "fp32", "--no-refine"]
    return rows


def run_rounds(artifacts: Path, photos: Path, rounds: int) -> tuple[dict, dict, int]:
    """Images a second per pipeline and round, what carseg_infer said it ran on, and how many
    photos each pipeline took: the folder's JPEGs, linked into one folder of their own so that
    carseg_infer reads exactly the files the seed script does (not the folder's other images)."""
    rows = pipelines(artifacts)
    speed: dict[str, list[float]] = {SEED: [], **{k: [] for k in rows}}
    ran_on: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="carseg-e2e-") as tmp:
        work = Path(tmp)
        try:
            jpegs, only = link_jpegs(photos, work)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
        for r in range(rounds):
            out = work / "seed"
            shutil.rmtree(out, ignore_errors=True)
            speed[SEED].append(seed_script.run(artifacts, jpegs, out)["images_per_s"])
            for label, extra in rows.items():
                rep = run_infer(artifacts, only, work / "cpp", *extra)
                if rep["failed"]:
                    raise SystemExit(f"{label}: {rep['failed']} photos failed: {rep['errors']}")
                speed[label].append(rep["images_per_second"])
                ran_on[label] = {k: rep[k] for k in ("backend", "precision", "device", "batch",
                                                     "refine", "succeeded") if k in rep}
            sys.stderr.write(f"round {r + 1}: " + ", ".join(
                f"{k.split(' (')[0]} {v[-1]:.1f}" for k, v in speed.items()) + " img/s\n")
    return speed, ran_on, len(jpegs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True, help="the exported folder")
    ap.add_argument("--photos", type=Path, required=True, help="a folder of JPEG photos")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds (default 3)")
    ap.add_argument("--commit", action="store_true",
                    help="write to benchmarks/results/<device>/ (default: out/benchmarks/)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    speed, ran_on, n = run_rounds(args.artifacts, args.photos, args.rounds)
    seed = speed[SEED]
    med = {k: statistics.median(v) for k, v in speed.items()}
    ratios = {k: [a / b for a, b in zip(v, seed, strict=True)] for k, v in speed.items()}
    info = M.device_info(torch.device("cpu"))
    result = {"device": info, "date": time.strftime("%Y-%m-%d"), "artifacts": str(args.artifacts),
              "photos": n, "rounds": args.rounds, "images_per_s": speed,
              "median_images_per_s": med, "ratio_to_seed_per_round": ratios,
              "carseg_infer_ran_on": ran_on}
    lines = [f"# End to end on the CPU: {info['name']}", "",
             f"{result['date']}, {n} JPEG photos from `{args.photos}` to a mask PNG and a white "
             f"JPEG cutout each, model `{args.artifacts}`, model loading not counted; "
             f"{args.rounds} rounds, the pipelines alternated within each. Command: "
             f"`python -m benchmarks.e2e --artifacts {args.artifacts} --photos {args.photos} "
             f"--rounds {args.rounds}`",
             "", "| pipeline | ran on | img/s (median) | over the seed (median) | "
             "over the seed, each round |", "| --- | --- | ---: | ---: | --- |"]
    for k, v in med.items():
        on = ran_on.get(k)
        where = (f"{on['device']} {on['precision']} {on['backend']}" if on
                 else "cpu fp32 TorchScript")
        lines.append(f"| {k} | {where} | {v:.1f} | {v / med[SEED]:.2f}x | "
                     + ", ".join(f"{x:.2f}x" for x in ratios[k]) + " |")
    lines.append("")
    for refined, plain in ((REFINED, PLAIN), (FP32_REFINED, FP32_PLAIN)):
        if refined not in speed:
            continue
        cost = [b / a - 1 for a, b in zip(speed[refined], speed[plain], strict=True)]
        lines.append(f"What the refinement costs carseg_infer ({ran_on[refined]['precision']}: "
                     "time a photo with it over time without), each round: "
                     f"{', '.join(f'{c:+.1%}' for c in cost)}; median "
                     f"{statistics.median(cost):+.1%}.")
    write_page(page_folder(info["slug"], args.commit), "e2e", M.asjson(result),
               "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
