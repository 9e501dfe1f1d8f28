"""Cutout quality and cost at full resolution: every path, with and without refinement.

    carseg synth --out out/ho --num 16 --size 1280x1918 --seed 7
    python -m benchmarks.cutout_quality --artifacts demo/artifacts --data out/ho [--commit]

On held-out synthetic photos (a seed the demo never trained on), against their true masks:
full-resolution Dice and boundary F1 within 2 pixels of the mask from the Python reference,
the bindings (carseg._native) and carseg_infer's written mask files, and of the alpha matte of
the transparent cutouts that carseg_infer and the bindings write (alpha > 127), each with the
manifest's refinement and without (--no-refine). Then carseg_infer's end-to-end time per photo
(decode, infer, refine, encode a mask PNG and a white JPEG cutout, write), with and without
refinement, runs alternated in one session, and a zoomed edge crop before and after refinement
(edge_crop.png), and the Python reference's figures car by car. Writes cutout_quality.json,
cutout_quality.md and edge_crop.png (with --page NAME: NAME.json, NAME.md, NAME_edge_crop.png) to
out/benchmarks/<device>/ (with --commit, benchmarks/results/<device>/ and docs/edge_crop.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from benchmarks.refine_study import boundary_f1, dice
from benchmarks.run import page_folder, write_page
from carseg.apps.gallery import edge_crop
from carseg.io.images import read_rgb
from carseg.runtime.reference import ReferencePredictor

REPO = Path(__file__).resolve().parents[1]


def carseg_infer() -> str:
    found = shutil.which("carseg_infer", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("carseg_infer is not built (make setup)")
    return found


def run_infer(artifacts: Path, photos: Path, out: Path, *extra: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    report = out.parent / f"{out.name}.json"
    subprocess.run([carseg_infer(), "infer", "--model", str(artifacts), "--input", str(photos),
                    "--output", str(out), "--report", str(report), *extra], check=True,
                   stderr=subprocess.DEVNULL)
    return json.loads(report.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True,
                    help="a synth/Carvana folder: train/*.jpg and train_masks/*_mask.gif")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7, help="the seed --data was drawn with")
    ap.add_argument("--rounds", type=int, default=3, help="timed carseg_infer runs per setting")
    ap.add_argument("--page", default="cutout_quality",
                    help="the page's name (another held-out set beside the default one)")
    ap.add_argument("--commit", action="store_true",
                    help="write to benchmarks/results/<device>/ (default: out/benchmarks/)")
    args = ap.parse_args(argv)
    from carseg import _native

    photos = sorted((args.data / "train").glob("*.jpg"))[:args.num]
    if not photos:
        raise SystemExit(f"no photos in {args.data / 'train'}")
    truth = {p.stem: np.asarray(Image.open(args.data / "train_masks" / f"{p.stem}_mask.gif")) > 0
             for p in photos}
    scores: dict[str, dict[str, list[float]]] = {}

    def score(name: str, stem: str, pred: np.ndarray) -> None:
        row = scores.setdefault(name, {"dice": [], "bf1": []})
        row["dice"].append(dice(pred > 0, truth[stem]))
        row["bf1"].append(boundary_f1(pred > 0, truth[stem]))

    refs = {on: ReferencePredictor(args.artifacts, refine=on) for on in (False, True)}
    # fp32 everywhere, the Python reference's precision: every path runs the same model (the
    # consumers' default, precision auto, would run a verified int8 model; benchmarks.int8
    # measures what int8 keeps).
    natives = {on: _native.Predictor(str(args.artifacts), precision="fp32", refine=on)
               for on in (False, True)}
    if refs[True].refine is None:
        raise SystemExit(f"{args.artifacts}: its manifest has no output.refine; export it again")
    label = {False: "no refinement", True: "refined"}
    crop_photo = None
    for p in photos:
        rgb = read_rgb(p)
        for on in (False, True):
            score(f"Python reference, mask ({label[on]})", p.stem, refs[on].predict(rgb))
            score(f"bindings, mask ({label[on]})", p.stem, natives[on].predict(rgb))
            rgba = natives[on].cutout(rgb, "transparent")
            score(f"bindings, transparent cutout's alpha ({label[on]})", p.stem,
                  rgba[..., 3] > 127)
        plain, alpha = refs[False].predict(rgb), refs[True].predict_matte(rgb)[1]
        fixed = int(((plain > 0) != truth[p.stem]).sum() - ((alpha > 127) != truth[p.stem]).sum())
        if crop_photo is None or fixed > crop_photo[0]:  # where refinement helped most
            crop_photo = (fixed, rgb, plain, alpha, truth[p.stem])
        sys.stderr.write(f"{p.name}\n")

    with tempfile.TemporaryDirectory(prefix="carseg-cutq-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "photos"
        folder.mkdir()
        for p in photos:
            (folder / p.name).symlink_to(p.resolve())
        for on in (False, True):
            extra = () if on else ("--no-refine",)
            run_infer(args.artifacts, folder, tmp / "t", *extra, "--precision", "fp32",
                      "--background", "transparent")
            for p in photos:
                mask = np.asarray(Image.open(tmp / "t" / f"{p.stem}_mask.png"))
                score(f"carseg_infer, mask file ({label[on]})", p.stem, mask)
                cut = np.asarray(Image.open(tmp / "t" / f"{p.stem}_cutout.png"))
                score(f"carseg_infer, transparent cutout's alpha ({label[on]})", p.stem,
                      cut[..., 3] > 127)
        # End to end with white JPEG cutouts, the settings alternated so that drift in the
        # machine's speed falls on both alike.
        per_photo: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for on in (False, True):
                extra = () if on else ("--no-refine",)
                r = run_infer(args.artifacts, folder, tmp / "w", *extra, "--precision", "fp32")
                assert r["succeeded"] == len(photos), r
                per_photo[on].append(r["seconds"] / len(photos))
    cost = {on: statistics.median(v) for on, v in per_photo.items()}
    default_page = args.page == "cutout_quality"
    crop_name = "edge_crop.png" if default_page else f"{args.page}_edge_crop.png"
    ratio = cost[True] / cost[False]

    info = M.device_info(torch.device("cpu"))
    device = info["name"]
    h, w = next(iter(truth.values())).shape
    summary = {name: {"dice": statistics.mean(r["dice"]), "bf1": statistics.mean(r["bf1"])}
               for name, r in scores.items()}
    lines = [f"# Cutout quality at full resolution: {device}", "",
             f"{len(photos)} held-out photos of {w}x{h} from `{args.data}` (`carseg synth --out "
             f"{args.data} --num {len(photos)} --size {h}x{w} --seed {args.seed}`; the demo "
             f"trains on seed 0), model `{args.artifacts}` (input {refs[True].spec.size} px, "
             f"refinement {refs[True].refine.to_json()}), {time.strftime('%Y-%m-%d')}. Dice and "
             "boundary F1 within 2 px against the true masks, mean over the photos. Command: "
             f"`python -m benchmarks.cutout_quality --artifacts {args.artifacts} --data "
             f"{args.data} --num {len(photos)}"
             f"{'' if default_page else ' --page ' + args.page}`.", "",
             "| path, output | Dice | boundary F1 (2 px) |", "| --- | ---: | ---: |"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['dice']:.4f} | {s['bf1']:.3f} |")
    by_car = per_car([p.stem for p in photos], scores, label)
    if len(by_car) > 1:
        lines += ["", "By car (the Python reference's masks; a car's views are alike, so the "
                  "cars, not the photos, are the independent samples):", "",
                  "| car | photos | Dice, no refinement | boundary F1 | Dice, refined | "
                  "boundary F1 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for car, row in by_car.items():
            lines.append(f"| {car} | {row['photos']} | {row['plain'][0]:.4f} | "
                         f"{row['plain'][1]:.3f} | {row['refined'][0]:.4f} | "
                         f"{row['refined'][1]:.3f} |")
    lines += ["", f"carseg_infer end to end (decode, infer, refine, mask PNG + white JPEG "
              f"cutout, write; {args.rounds} runs each over the {len(photos)} photos, "
              f"alternated, median): {cost[False] * 1000:.1f} ms a photo without refinement, "
              f"{cost[True] * 1000:.1f} ms with it: refinement costs {ratio - 1:+.1%}.", "",
              f"![edge crop: photo, cutout without refinement, with refinement]({crop_name})"]
    out = page_folder(info["slug"], args.commit)
    assert crop_photo is not None
    crop = edge_crop(*crop_photo[1:4], size=200, zoom=2, truth=crop_photo[4])
    Image.fromarray(crop).save(out / crop_name)
    if args.commit and default_page:
        Image.fromarray(crop).save(REPO / "docs" / "edge_crop.png")
    write_page(out, args.page,
               {"device": device, "photos": [p.name for p in photos], "size": [h, w],
                "scores": scores, "summary": summary, "by_car": by_car,
                "seconds_per_photo": per_photo, "refine_cost_ratio": ratio},
               "\n".join(lines) + "\n", indent=1)
    return 0


def per_car(stems: list[str], scores: dict[str, dict[str, list[float]]],
            label: dict[bool, str]) -> dict[str, dict]:
    """The Python reference's mean Dice and boundary F1 per car (Carvana names a photo
    <car>_<view>), without refinement and with it."""
    cars: dict[str, list[int]] = {}
    for i, stem in enumerate(stems):
        cars.setdefault(stem.rsplit("_", 1)[0], []).append(i)
    out = {}
    for car, idx in cars.items():
        row: dict = {"photos": len(idx)}
        for on, key in ((False, "plain"), (True, "refined")):
            r = scores[f"Python reference, mask ({label[on]})"]
            row[key] = (statistics.mean(r["dice"][i] for i in idx),
                        statistics.mean(r["bf1"][i] for i in idx))
        out[car] = row
    return out


if __name__ == "__main__":
    raise SystemExit(main())
