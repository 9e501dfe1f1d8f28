"""`make demo`: the main job end to end, each step announced and timed.

A script of the source tree, not of the installed package: it drives the commands (`carseg`,
`python -m export`, `carseg_infer`, `python -m benchmarks`) as a user would, from the
repository root.

synthetic (or real Carvana) data -> prepare -> train from configs/train.yml -> export all +
verify -> carseg_infer on held-out photos -> summary. Everything lands under demo/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from carseg.apps.gallery import dice
from carseg.datasets.prepare import read_csv
from carseg.io.images import read_mask
from carseg.runtime.manifest import INT8_NAME, parity_passed

log = logging.getLogger("carseg.demo")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Steps:
    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def run(self, name: str, cmd: Sequence[str | Path],
            refused: Callable[[], str | None] | None = None) -> None:
        """Run one step; a failure stops the demo, except exit 1 of a step whose `refused()`
        then says it was a refusal (and what it means), which is printed and the demo goes
        on."""
        print(f"\n=== {name}: {' '.join(str(c) for c in cmd)}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run([str(c) for c in cmd], cwd=REPO)
        dt = time.monotonic() - t0
        self.times.append((name, dt))
        why = refused() if proc.returncode == 1 and refused else None
        if why:
            print(f"=== {name}: refused after {dt:.1f} s: {why}", flush=True)
            return
        if proc.returncode != 0:
            raise SystemExit(f"demo: step '{name}' failed (exit {proc.returncode}) "
                             f"after {dt:.0f} s")
        print(f"=== {name}: done in {dt:.1f} s", flush=True)


def int8_refused(manifest: Path) -> str | None:
    """After `export int8` exited 1: what it means when verify refused the int8 model alone
    (its entry's parity.passed false, every other artifact passed), else None (a failure)."""
    try:
        arts = json.loads(manifest.read_text())["artifacts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(arts, dict):
        return None
    others = [parity_passed(a) is True for k, a in arts.items() if k != INT8_NAME and a is not None]
    if parity_passed(arts.get(INT8_NAME)) is False and all(others):
        iou = arts[INT8_NAME]["parity"].get("mask_iou")
        return (f"verify refused the int8 model (mask IoU {iou} against fp32, under its bar); "
                f"carseg_infer runs fp32")
    return None


def full_resolution_dice(csv_path: Path, masks: Path) -> tuple[float, int, tuple[int, int]]:
    """Mean Dice of `masks`/<stem>_mask.png against the CSV's true masks, each at its photo's
    own size: (Dice, photos, (width, height) of the first)."""
    dices, size = [], (0, 0)
    for photo, truth_path in read_csv(csv_path):
        pred, truth = read_mask(masks / f"{photo.stem}_mask.png"), read_mask(truth_path)
        size = size if dices else (truth.shape[1], truth.shape[0])
        dices.append(dice(truth, pred))
    return sum(dices) / len(dices), len(dices), size


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python python/demo.py", description=__doc__)
    p.add_argument("--data", type=Path, help="real Carvana folder (train/, train_masks/)")
    p.add_argument("--out", type=Path, default=REPO / "demo", help="where everything goes")
    p.add_argument("--num", type=int, default=320, help="synthetic photos to draw")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--image-size", type=int, help="override the config's image size")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps()
    carseg = BIN / "carseg"
    if args.data:
        data = args.data.resolve()
        config = REPO / "python" / "carseg" / "configs" / "train_carvana.yml"
    else:
        data = out / "data"
        config = REPO / "python" / "carseg" / "configs" / "train.yml"
        if not (data / "train").is_dir() or len(list((data / "train").glob("*.jpg"))) != args.num:
            shutil.rmtree(data, ignore_errors=True)
            steps.run("synth", [carseg, "synth", "--out", data, "--num", str(args.num)])
    csv_dir = out / "csv"
    steps.run("prepare", [carseg, "prepare", "--datapath", data, "--out", csv_dir])
    logdir = out / "logs"
    shutil.rmtree(logdir, ignore_errors=True)
    train = [carseg, "train", "--config", config, "--data", csv_dir, "--logdir", logdir]
    if args.epochs:
        train += ["--epochs", str(args.epochs)]
    if args.image_size:
        train += ["--image-size", str(args.image_size)]
    steps.run("train", train)
    summary = json.loads((logdir / "summary.json").read_text())

    artifacts = out / "artifacts"
    if (REPO / "export" / "__main__.py").is_file():
        shutil.rmtree(artifacts, ignore_errors=True)
        steps.run("export all + verify", [sys.executable, "-m", "export", "all", "--logdir", logdir,
                                          "--out", artifacts,
                                          "--images", csv_dir / "dataset_valid.csv"])
        # The quantized CPU model, calibrated on training photos and verified on the validation
        # ones against fp32. carseg_infer's default (precision auto) runs it only where verify
        # passed it; a model whose int8 masks miss stays fp32, and the demo goes on.
        steps.run("export int8 + verify", [sys.executable, "-m", "export", "int8", artifacts,
                                           "--calibration", csv_dir / "dataset_train.csv",
                                           "--images", csv_dir / "dataset_valid.csv"],
                  refused=lambda: int8_refused(artifacts / "manifest.json"))
    infer = shutil.which("carseg_infer", path=str(BIN))
    if infer and (artifacts / "manifest.json").is_file():
        held_out = out / "held_out"  # the validation photos: never trained on
        shutil.rmtree(held_out, ignore_errors=True)
        held_out.mkdir()
        for photo, _ in read_csv(csv_dir / "dataset_valid.csv"):
            (held_out / photo.name).symlink_to(photo)
        shutil.copyfile(next(held_out.iterdir()).resolve(), out / "car.jpg")  # for the README
        cutouts = out / "cutouts"
        shutil.rmtree(cutouts, ignore_errors=True)
        steps.run("carseg_infer infer", [infer, "infer", "--model", artifacts, "--input", held_out,
                                         "--output", cutouts, "--report",
                                         out / "infer_report.json"])
    full_res = None
    if (out / "cutouts").is_dir():
        full_res = full_resolution_dice(csv_dir / "dataset_valid.csv", out / "cutouts")
    if (artifacts / "manifest.json").is_file():
        masks = ["--masks", out / "cutouts"] if (out / "cutouts").is_dir() else []
        steps.run("gallery", [carseg, "gallery", "--csv", csv_dir / "dataset_valid.csv", *masks,
                              "--model", artifacts, "--out", out / "gallery.png",
                              "--title", f"Held-out photos of {data}."])
        steps.run("benchmarks --quick", [sys.executable, "-m", "benchmarks", "--artifacts",
                                         artifacts, "--quick", "--out", out / "bench"])

    print("\n=== summary")
    manifest = artifacts / "manifest.json"
    if manifest.is_file():
        arts = json.loads(manifest.read_text())["artifacts"]
        print("  verify (parity against eager PyTorch):")
        for name, a in arts.items():
            par = a.get("parity") or {}
            diff = par.get("max_abs_diff", float("nan"))
            print(f"    {name:<12} {a['precision']}  max|diff| {diff:.1e}"
                  f"  IoU {par.get('mask_iou', float('nan')):.5f}  "
                  f"{'PASS' if par.get('passed') else 'not verified'}")
    bench_md = out / "bench" / "results.md"
    if bench_md.is_file():
        print("  latency (python -m benchmarks --quick):")
        for line in bench_md.read_text().splitlines():
            if line.startswith("| ") and "---" not in line:
                cols = [c.strip() for c in line.strip("|").split("|")]
                print(f"    {cols[0]:<16} {cols[2]:>5} {cols[3]:>5} {cols[4]:>8} {cols[7]:>8}")
    for name, dt in steps.times:
        print(f"  {name:<24} {dt:7.1f} s")
    valid = summary["valid"]
    size = summary.get("image_size", "")
    print(f"  valid Dice {valid['dice']:.4f}, IoU {valid['iou']:.4f}: Catalyst's metric on the "
          f"validation photos at the model's input size{f' ({size} px)' if size else ''} "
          f"(best epoch {summary['best_epoch']} of {summary['num_epochs']} by valid "
          f"{summary.get('metric', 'dice')})")
    if full_res is not None:
        dice, n, (w, h) = full_res
        ran = json.loads((out / "infer_report.json").read_text())
        print(f"  full-resolution Dice {dice:.4f}: carseg_infer's masks ({ran['precision']} "
              f"{ran['backend']}, the folder's default) at {w}x{h} against the true masks, the "
              f"same {n} validation photos")
    print(f"  data:      {data}\n  logdir:    {logdir}  (tensorboard --logdir {logdir})")
    if (artifacts / "manifest.json").is_file():
        print(f"  artifacts: {artifacts}")
    if (out / "cutouts").is_dir():
        print(f"  cutouts:   {out / 'cutouts'}")
    if (out / "gallery.png").is_file():
        print(f"  gallery:   {out / 'gallery.png'} (and .html)")
    if bench_md.is_file():
        print(f"  benchmark: {bench_md}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
