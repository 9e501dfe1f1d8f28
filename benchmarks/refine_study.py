"""Full-resolution mask refinement, measured before it is built (issue 16's groundwork).

    carseg synth --out out/ho --num 16 --size 1280x1918 --seed 7
    python -m benchmarks.refine_study --artifacts demo/artifacts --data out/ho [--num 16]

For held-out synthetic photos (a seed the demo never trained on) at full resolution, against
their true masks: full-resolution Dice and boundary F1 within 2 pixels of the model's mask as
carseg makes it today (logits resized bilinearly, then thresholded), and of the same
probabilities refined by guided filters guided by the photo (grey or colour guide, full
resolution or subsampled as in He and Sun's fast guided filter), with the time each
refinement takes on this machine (median over the photos, refinement alone). Writes
refine_study.json and refine_study.md to out/benchmarks/<device>/ (with --commit,
benchmarks/results/<device>/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from benchmarks import measure as M
from benchmarks.run import page_folder, write_page
from carseg.io.images import read_rgb
from carseg.runtime.preprocess import preprocess
from carseg.runtime.reference import ReferencePredictor
from carseg.runtime.refine import box, guided_coefficients, refine

# ---- metrics ---------------------------------------------------------------------------------


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    inter = np.logical_and(pred, true).sum()
    total = pred.sum() + true.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (and the image border counts as in)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def boundary_f1(pred: np.ndarray, true: np.ndarray, tol: float = 2.0) -> float:
    """F1 of boundary pixels: a predicted boundary pixel is right when a true one lies within
    `tol` pixels (Euclidean), and the other way round for recall."""
    bp, bt = boundary(pred), boundary(true)
    if not bp.any() or not bt.any():
        return float(bp.any() == bt.any())
    to_true = ndimage.distance_transform_edt(~bt)
    to_pred = ndimage.distance_transform_edt(~bp)
    precision = float((to_true[bp] <= tol).mean())
    recall = float((to_pred[bt] <= tol).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ---- guided filters --------------------------------------------------------------------------


def guided_grey(guide: torch.Tensor, p: torch.Tensor, r: int, eps: float) -> tuple[
        torch.Tensor, torch.Tensor]:
    """The guided filter with a one-channel guide [H,W]: the mean linear coefficients."""
    mi, mp = box(guide, r), box(p, r)
    cov = box(guide * p, r) - mi * mp
    var = box(guide * guide, r) - mi * mi
    a = cov / (var + eps)
    return box(a, r), box(mp - a * mi, r)


def refine_grey(rgb: torch.Tensor, low_logits: torch.Tensor, *, r: int, eps: float, s: int
                ) -> torch.Tensor:
    """As carseg.runtime.refine.refine, with the photo's grey level as the guide."""
    h, w = rgb.shape[:2]
    full = rgb.permute(2, 0, 1).float().div_(255).mean(0)
    lh, lw = max(1, round(h / s)), max(1, round(w / s))
    small = full if s == 1 else F.interpolate(full[None, None], size=(lh, lw), mode="area")[0, 0]
    p = torch.sigmoid(F.interpolate(low_logits[None, None], size=(lh, lw), mode="bilinear",
                                    align_corners=False)[0, 0])
    a, b = guided_grey(small, p, max(1, round(r / s)), eps)
    if s > 1:
        ab = F.interpolate(torch.stack([a, b])[None], size=(h, w), mode="bilinear",
                           align_corners=False)[0]
        a, b = ab[0], ab[1]
    return (a * full + b).clamp_(0, 1)


def band(rgb: torch.Tensor, low_logits: torch.Tensor, *, r: int = 64, eps: float = 1e-4,
         s: int = 16, margin: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan for a fast apply: the full-resolution pixels (bool [H,W]) of the cells whose
    refined value could fall within `margin` of 0.5, bounded per cell from its own colour
    minimum and maximum and grown by one cell, and the low-resolution refined probability
    resized (bilinear) to full resolution, which stands for the rest."""
    h, w = rgb.shape[:2]
    full = rgb.permute(2, 0, 1).float().div_(255)
    lh, lw = max(1, round(h / s)), max(1, round(w / s))
    small = F.interpolate(full[None], size=(lh, lw), mode="area")[0]
    p = torch.sigmoid(F.interpolate(low_logits[None, None], size=(lh, lw), mode="bilinear",
                                    align_corners=False)[0, 0])
    a, b = guided_coefficients(small, p, max(1, round(r / s)), eps)
    hi_c = F.adaptive_max_pool2d(full[None], (lh, lw))[0]
    lo_c = -F.adaptive_max_pool2d(-full[None], (lh, lw))[0]
    lo = b + torch.minimum(a * lo_c, a * hi_c).sum(0)
    hi = b + torch.maximum(a * lo_c, a * hi_c).sum(0)
    unsure = ((lo < 0.5 + margin) & (hi > 0.5 - margin)).float()
    unsure = F.max_pool2d(unsure[None, None], 3, stride=1, padding=1)
    inside = F.interpolate(unsure, size=(h, w), mode="nearest")[0, 0] > 0
    q_low = (a * small).sum(0) + b
    rest = F.interpolate(q_low[None, None], size=(h, w), mode="bilinear",
                         align_corners=False)[0, 0]
    return inside, rest


# ---- the study -------------------------------------------------------------------------------

def variants() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    out: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
    for colour in (False, True):
        for r, s in ((64, 1), (64, 4), (64, 8), (32, 4), (48, 8), (96, 8), (128, 8), (64, 16)):
            for eps in (1e-3, 1e-4):
                if s == 1 and (eps != 1e-4 or r != 64):
                    continue
                name = f"{'colour' if colour else 'grey'} r={r} s={s} eps={eps:g}"
                if colour:
                    out[name] = (lambda rgb, lg, r=r, s=s, eps=eps:
                                 refine(rgb, lg, radius=r, eps=eps, subsample=s))
                else:
                    out[name] = (lambda rgb, lg, r=r, s=s, eps=eps:
                                 refine_grey(rgb, lg, r=r, eps=eps, s=s))
    return out


def low_res_logits(predictor: ReferencePredictor, rgb: torch.Tensor) -> torch.Tensor:
    """The model's logits over the photo's part of its input, [h', w'] (no padding)."""
    spec = predictor.spec
    nh, nw = spec.resized_shape(int(rgb.shape[0]), int(rgb.shape[1]))
    return predictor.run(preprocess(rgb, spec)[None])[0, 0, :nh, :nw]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True,
                    help="a synth/Carvana folder: train/*.jpg and train_masks/*_mask.gif")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7,
                    help="the seed --data was drawn with, for the results page")
    ap.add_argument("--commit", action="store_true",
                    help="write to benchmarks/results/<device>/ (default: out/benchmarks/)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    predictor = ReferencePredictor(args.artifacts)
    photos = sorted((args.data / "train").glob("*.jpg"))[:args.num]
    if not photos:
        raise SystemExit(f"no photos in {args.data / 'train'}")
    rows: dict[str, dict[str, list[float]]] = {}
    banded: list[dict[str, float]] = []

    def record(name: str, prob: torch.Tensor, true: np.ndarray, seconds: float) -> None:
        pred = (prob > 0.5).numpy()
        row = rows.setdefault(name, {"dice": [], "bf1": [], "seconds": []})
        row["dice"].append(dice(pred, true))
        row["bf1"].append(boundary_f1(pred, true))
        row["seconds"].append(seconds)

    for photo in photos:
        rgb = torch.from_numpy(read_rgb(photo).copy())  # read_rgb may give a read-only view
        true = np.asarray(Image.open(args.data / "train_masks" / f"{photo.stem}_mask.gif")) > 0
        lg = low_res_logits(predictor, rgb)
        t0 = time.perf_counter()
        base = torch.sigmoid(F.interpolate(lg[None, None], size=true.shape, mode="bilinear",
                                           align_corners=False)[0, 0])
        record("none (today: bilinear logits, threshold)", base, true,
               time.perf_counter() - t0)
        for name, fn in variants().items():
            t0 = time.perf_counter()
            prob = fn(rgb, lg)
            record(name, prob, true, time.perf_counter() - t0)
        inside, rest = band(rgb, lg)
        exact = refine(rgb, lg, radius=64, eps=1e-4, subsample=16) > 0.5
        banded.append({"fraction": float(inside.float().mean()),
                       "differ": int(((torch.where(inside, exact, rest > 0.5)) != exact).sum())})
        sys.stderr.write(f"{photo.name}: {len(rows)} variants\n")

    info = M.device_info(torch.device("cpu"))
    device = info["name"]
    summary = {name: {"dice": statistics.mean(r["dice"]), "bf1": statistics.mean(r["bf1"]),
                      "seconds_p50": statistics.median(r["seconds"])}
               for name, r in rows.items()}
    h, w = true.shape
    lines = [f"# Mask refinement study: {device}", "",
             f"{len(photos)} held-out photos of {w}x{h} from `{args.data}`, model "
             f"`{args.artifacts}` (input {predictor.spec.size} px), {time.strftime('%Y-%m-%d')}. "
             "Dice and boundary F1 (2 px) at full resolution against the true masks, mean over "
             "the photos; refinement time alone, median, one thread pool of "
             f"{torch.get_num_threads()}. Command: `python -m benchmarks.refine_study "
             f"--artifacts {args.artifacts} --data {args.data} --num {args.num}`, after "
             f"`carseg synth --out {args.data} --num {len(photos)} --size {h}x{w} --seed "
             f"{args.seed}` (the demo trains on seed 0).", "",
             "| refinement | Dice | boundary F1 (2 px) | ms a photo |",
             "| --- | ---: | ---: | ---: |"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['dice']:.4f} | {s['bf1']:.3f} | "
                     f"{s['seconds_p50'] * 1000:.0f} |")
    best = max(summary, key=lambda n: summary[n]["bf1"])
    base = next(iter(rows))
    lines += ["", f"Per photo, today against the variant of the best mean boundary F1 ({best}):",
              "", "| photo | Dice today | Dice refined | boundary F1 today | refined |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for i, photo in enumerate(photos):
        lines.append(f"| {photo.name} | {rows[base]['dice'][i]:.4f} | {rows[best]['dice'][i]:.4f}"
                     f" | {rows[base]['bf1'][i]:.3f} | {rows[best]['bf1'][i]:.3f} |")
    lines += ["", "Band-limited apply (how a fast implementation would do it; colour r=64 s=16 "
              "eps=1e-4): the filter applied only in the cells whose refined value could fall "
              "within 0.05 of 0.5 (bounded from each cell's colour minimum and maximum, grown by "
              "one cell), the low-resolution result elsewhere: "
              f"{statistics.mean(b['fraction'] for b in banded):.1%} of the pixels on average "
              f"(at most {max(b['fraction'] for b in banded):.1%}), and "
              f"{max(b['differ'] for b in banded)} mask pixels differing from the full apply on "
              "the worst photo."]
    write_page(page_folder(info["slug"], args.commit), "refine_study",
               {"device": device, "photos": [p.name for p in photos], "size": [h, w],
                "per_photo": rows, "summary": summary, "band": banded},
               "\n".join(lines) + "\n", indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
