"""What a model of a given input size could give at most: its true mask, shrunk to the model's
resolution, made into the full-resolution mask the way carseg makes it.

    carseg synth --out out/ho --num 16 --size 1280x1918 --seed 7
    python -m benchmarks.edge_oracle --data out/ho [--sizes 128,192] [--radii 1,2,4] [--commit]

For each held-out photo and model size S, the true mask is shrunk to the model's grid (the
photo's longest side to S) in two ways: to the share of each model pixel the car covers (area;
what a model trained on soft targets learns to give), and to the nearest pixel (what a model
trained on nearest-resized {0,1} targets learns). Each is then made into a full-resolution
mask as a consumer does: resized bilinearly and thresholded at 0.5 (`--no-refine`), and by the
manifest's guided-filter refinement at each radius (in model pixels). Full-resolution Dice and
boundary F1 within 2 pixels against the true mask give the ceiling of each way, no model
involved; they tell which targets to train on and which refinement radius a good model wants.
Writes edge_oracle.json and edge_oracle.md to out/benchmarks/<device>/ (with --commit,
benchmarks/results/<device>/).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks import measure as M
from benchmarks.refine_study import boundary_f1, dice
from benchmarks.run import page_folder, write_page
from carseg.io.images import read_rgb
from carseg.runtime import refine
from carseg.runtime.refine import RefineSpec

SHRINKS = ("area", "nearest")


def shrink(truth: torch.Tensor, hw: tuple[int, int], how: str) -> torch.Tensor:
    """bool [H,W] -> float32 [h,w] in [0,1]: the car's share of each cell, or the nearest
    pixel's {0,1}."""
    t = truth.float()[None, None]
    if how == "area":
        return F.adaptive_avg_pool2d(t, hw)[0, 0]
    return F.interpolate(t, size=hw, mode="nearest")[0, 0]


def as_logits(p: torch.Tensor) -> torch.Tensor:
    """Probabilities -> logits a model could give (saturated at 0.02 and 0.98)."""
    return torch.logit(p.clamp(0.02, 0.98))


def rows_for(rgb: torch.Tensor, truth: np.ndarray, size: int, radii: list[float]
             ) -> dict[str, tuple[float, float]]:
    h, w = truth.shape
    hw, _ = RefineSpec().grid(h, w, size)  # the model's grid (subsample 1); no radius in it
    out = {}
    for how in SHRINKS:
        lg = as_logits(shrink(torch.from_numpy(truth), hw, how))
        up = F.interpolate(lg[None, None], size=(h, w), mode="bilinear", align_corners=False)
        masks = {0.0: (up[0, 0] > 0).numpy()}
        for radius in radii:
            spec = RefineSpec(radius=radius)
            masks[radius] = refine.matte(rgb, refine.fit(rgb, lg, spec, 0.5, size))[0].numpy() > 0
        for radius, mask in masks.items():
            out[f"{how}|{radius:g}"] = (dice(mask, truth), boundary_f1(mask, truth))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True,
                    help="a synth/Carvana folder: train/*.jpg and train_masks/*_mask.gif")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7, help="the seed --data was drawn with")
    ap.add_argument("--sizes", default="128,192", help="model input sizes")
    ap.add_argument("--radii", default="1,2,4", help="refinement radii, model pixels")
    ap.add_argument("--commit", action="store_true",
                    help="write to benchmarks/results/<device>/ (default: out/benchmarks/)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    radii = [float(r) for r in args.radii.split(",")]
    photos = sorted((args.data / "train").glob("*.jpg"))[:args.num]
    if not photos:
        raise SystemExit(f"no photos in {args.data / 'train'}")

    scores: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for p in photos:
        truth = np.asarray(Image.open(args.data / "train_masks" / f"{p.stem}_mask.gif")) > 0
        rgb = torch.from_numpy(read_rgb(p).copy())
        for size in sizes:
            for key, v in rows_for(rgb, truth, size, radii).items():
                scores.setdefault(str(size), {}).setdefault(key, []).append(v)

    summary = {size: {key: {"dice": statistics.mean(d for d, _ in v),
                            "bf1": statistics.mean(b for _, b in v),
                            "dice_per_photo": [round(d, 5) for d, _ in v]}
                      for key, v in by_key.items()}
               for size, by_key in scores.items()}
    info = M.device_info(torch.device("cpu"))
    h, w = truth.shape
    lines = [
        "# The edge a model could give: its true mask at the model's size, made full size\n",
        f"{len(photos)} held-out synthetic photos of {w}x{h} (`carseg synth --seed {args.seed}`),"
        " against their true masks; no model involved.",
        f"`python -m benchmarks.edge_oracle --data {args.data} --sizes {args.sizes} "
        f"--radii {args.radii}`\n",
        "| model size | targets shrunk by | resized, thresholded | "
        + " | ".join(f"refined, radius {r:g}" for r in radii) + " |",
        "| ---: | --- | ---: | " + " | ".join("---:" for _ in radii) + " |",
    ]
    for size, by_key in summary.items():
        for how in SHRINKS:
            cells = [by_key[f"{how}|{r:g}"] for r in [0.0, *radii]]
            lines.append(f"| {size} | {how} | " + " | ".join(
                f"{c['dice']:.4f} / {c['bf1']:.3f}" for c in cells) + " |")
    lines += ["", "Each cell: full-resolution Dice / boundary F1 within 2 px, means over the "
              "photos. `area`: the share of each model pixel the car covers (soft targets); "
              "`nearest`: the nearest pixel ({0,1} targets).", ""]
    write_page(page_folder(info["slug"], args.commit), "edge_oracle",
               {"device": info, "photos": [p.name for p in photos], "sizes": sizes,
                "radii": radii, "results": summary}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
